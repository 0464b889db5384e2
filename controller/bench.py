"""The cold/warm bench procedure.

The bench repeats one timed load (``controller.measure``) in randomised complete blocks:
every round holds each (mode, scheduler, pre-warm variant) once, in a seeded random order,
so drift (a warming disk, a busy neighbour) cannot favour one mode.

- cold: this model's pages are evicted per file (no root needed), optionally the whole
  host's page cache too (``--drop-caches``, root, with a warning);
- warm: loaded right after a load (a load that leaves it resident is run first if needed);
- prewarm_cold: evicted, pre-warmed (a pre-warm sample of its own), loaded;
- prewarm_warm: pre-warmed while already warm (the cost when it was not needed), loaded.

Every cold run checks that residency really was ~0 before the load; when it was not (pages
mapped by a running process stay resident) the sample keeps ``declared_mode=cold``, gets
the mode that was measured and ``mode_verified=False``, and the bench says so.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from controller.evict import evict
from controller.interrupts import Interrupt
from controller.measure import Measurer, rounded
from controller.memguard import MemoryGuard
from controller.prewarm import PrewarmOptions, Strategy
from controller.sampling import BENCH_THRESHOLDS, PREWARM_MODES
from controller.scheduler import (
    SchedulerExperiment,
    refuse_leftover,
    scheduler_files,
    why_not_switchable,
)
from exporter.samples import Mode, Outcome, Sample

log = structlog.get_logger("pagewarm")

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
DEFAULT_MODES = (Mode.COLD, Mode.WARM, Mode.PREWARM_COLD, Mode.PREWARM_WARM)
SCHEDULER_MODES = (Mode.COLD, Mode.WARM)


class BenchError(Exception):
    """The bench cannot run as asked (printed for the user, exit status 2)."""


# The bench ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """A pre-warm configuration compared in one bench."""

    strategy: Strategy
    threads: int

    @property
    def label(self) -> str:
        return f"{self.strategy}:{self.threads}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, threads = text.partition(":")
        try:
            return cls(Strategy(name.strip()), int(threads) if threads else 1)
        except ValueError:
            raise BenchError(
                f"not a pre-warm variant: {text!r} (STRATEGY:THREADS, e.g. populate:1, read:8)"
            ) from None


@dataclass(frozen=True, slots=True)
class Step:
    round: int
    mode: Mode
    scheduler: str | None = None
    variant: Variant | None = None

    @property
    def label(self) -> str:
        parts = [str(self.mode)]
        if self.variant:
            parts.append(self.variant.label)
        if self.scheduler:
            parts.append(f"scheduler {self.scheduler}")
        return " ".join(parts)


def plan_steps(
    modes: Sequence[Mode],
    runs: int,
    *,
    seed: int,
    schedulers: Sequence[str | None] = (None,),
    variants: Sequence[Variant | None] = (None,),
) -> list[Step]:
    """``runs`` rounds; each holds every (scheduler, mode, variant) cell once, shuffled."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible order, not a secret
    steps: list[Step] = []
    for round_index in range(runs):
        cells = [
            Step(round_index, mode, scheduler, variant if mode in PREWARM_MODES else None)
            for scheduler in schedulers
            for mode in modes
            for variant in (variants if mode in PREWARM_MODES else (None,))
        ]
        rng.shuffle(cells)
        steps.extend(cells)
    return steps


@dataclass
class BenchConfig:
    modes: tuple[Mode, ...]
    runs: int
    seed: int
    options: PrewarmOptions
    guard: MemoryGuard
    variants: tuple[Variant, ...]
    schedulers: tuple[str, ...] = ()
    drop_caches: bool = False
    journal: Path = field(default_factory=lambda: Path("scheduler-journal.json"))
    # A signal cancels a pre-warm in progress (recorded, partial), then stops the bench.
    interrupt: Interrupt = field(default_factory=Interrupt)


@dataclass
class BenchResult:
    bench_id: str
    seed: int
    samples: list[Sample]
    scheduler_note: str | None
    steps: list[Step]


class Bench:
    def __init__(self, measurer: Measurer, config: BenchConfig) -> None:
        self.measurer = measurer
        self.config = config
        self.samples: list[Sample] = []

    # Preparing the cache for each mode ---------------------------------------------------
    def make_cold(self) -> None:
        result = evict(self.measurer.weight_set, self.measurer.probe)
        for path, error in result.errors:
            log.error("file not evicted", path=path, error=error)
        if self.config.drop_caches:
            drop_host_caches()

    def make_warm(self) -> None:
        ratio = self.measurer.residency().ratio
        if ratio is not None and ratio >= BENCH_THRESHOLDS.warm_min:
            return
        log.info("warming with an unrecorded load first", resident_ratio=rounded(ratio))
        timing = self.measurer.target.run(self.measurer.weight_set, self.measurer.timeout)
        if timing.outcome is not Outcome.OK:
            log.error("the warming load failed", error=timing.error)

    def run_step(
        self, step: Step, recorder: Measurer, on_progress: Callable[[int], None] | None
    ) -> None:
        """Prepare the cache for the step's mode, then measure with ``recorder`` (the
        measurer whose samples carry this bench's labels)."""
        if step.mode in (Mode.COLD, Mode.PREWARM_COLD):
            self.make_cold()
        else:
            self.make_warm()
        prewarm_sample = None
        if step.mode in PREWARM_MODES:
            variant = step.variant or self.config.variants[0]
            options = PrewarmOptions(
                strategy=variant.strategy,
                threads=variant.threads,
                chunk_bytes=self.config.options.chunk_bytes,
                only_missing=self.config.options.only_missing,
                rate_limit_bytes_per_second=self.config.options.rate_limit_bytes_per_second,
            )
            with self.config.interrupt.polled() as cancel:
                prewarm_sample = recorder.prewarm(
                    options,
                    self.config.guard,
                    run_index=step.round,
                    on_progress=on_progress,
                    cancel=cancel,
                )
            self.samples.append(prewarm_sample)
            self.config.interrupt.check()
        sample = recorder.measure(step.mode, prewarm_sample=prewarm_sample, run_index=step.round)
        self.samples.append(sample)
        if step.mode in (Mode.COLD, Mode.PREWARM_COLD):
            check_cold(sample, prewarm_sample)

    def run(self) -> BenchResult:
        bench_id = uuid.uuid4().hex[:12]
        experiment, scheduler_note = self._experiment()
        recorder = self.measurer.for_bench(bench_id, scheduler_note)
        schedulers: tuple[str | None, ...] = (None,)
        if experiment is not None:
            schedulers = self.config.schedulers
        steps = plan_steps(
            self.config.modes,
            self.config.runs,
            seed=self.config.seed,
            schedulers=schedulers,
            variants=self.config.variants,
        )
        log.info(
            "bench",
            bench_id=bench_id,
            seed=self.config.seed,
            steps=len(steps),
            order=[s.label for s in steps],
        )
        with (
            experiment if experiment is not None else contextlib.nullcontext(),
            step_progress(len(steps)) as advance,
        ):
            for number, step in enumerate(steps, 1):
                if experiment is not None and step.scheduler:
                    experiment.switch(step.scheduler)
                advance(number, step.label)
                self.run_step(step, recorder, None)
                _log_step(number, len(steps), step, self.samples[-1])
        return BenchResult(bench_id, self.config.seed, self.samples, scheduler_note, steps)

    def _experiment(self) -> tuple[SchedulerExperiment | None, str | None]:
        """The scheduler experiment to run (None: none), and the note the samples carry."""
        requested = self.config.schedulers
        if not requested:
            return None, None
        setup = self.measurer.header.setup
        files = scheduler_files(setup.storage, setup.sysfs)
        reason = why_not_switchable(files, setup.storage)
        current = setup.current_scheduler()
        if reason is not None:
            note = (
                f"scheduler experiment not run: {reason}. It would have tested "
                f"{', '.join(requested)} (cold and warm loads under each); all runs used "
                f"the current scheduler {current or 'none (no block device)'}."
            )
            log.warning(note)
            return None, note
        refuse_leftover(self.config.journal)
        offered = set(files[0].read()[1])
        unknown = [s for s in requested if s not in offered]
        if unknown:
            raise BenchError(
                f"scheduler {', '.join(unknown)} not offered by {files[0].device} "
                f"(offered: {', '.join(sorted(offered))})"
            )
        note = (
            f"scheduler experiment on {', '.join(f.device for f in files)}: "
            f"{', '.join(requested)}; the original ({current}) was restored afterwards"
        )
        return SchedulerExperiment(files, self.config.journal), note


def check_cold(sample: Sample, prewarm_sample: Sample | None) -> None:
    """Say so when a cold run was not cold (the sample already carries the truth)."""
    ratio = prewarm_sample.resident_ratio_before if prewarm_sample else sample.resident_ratio_before
    if ratio is None:
        log.warning(
            "cold run unverified: residency unknown before the load",
            mode=str(sample.declared_mode or sample.mode),
        )
    elif ratio > BENCH_THRESHOLDS.cold_max:
        log.warning(
            "cold run was NOT cold: pages stayed resident after eviction (mapped by a "
            "running process, or dirty); recorded with the measured mode",
            resident_ratio_before=round(ratio, 4),
            recorded_mode=str(sample.mode),
        )


def drop_host_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("1\n")


def _log_step(number: int, total: int, step: Step, sample: Sample) -> None:
    log.info(
        "load",
        step=f"{number}/{total}",
        mode=str(sample.mode),
        declared_mode=str(sample.declared_mode) if sample.declared_mode else None,
        variant=step.variant.label if step.variant else None,
        scheduler=sample.scheduler,
        seconds=round(sample.seconds, 3),
        prewarm_seconds=rounded(sample.prewarm_seconds),
        resident_before=rounded(sample.resident_ratio_before),
        resident_after=rounded(sample.resident_ratio_after),
        outcome=str(sample.outcome),
    )


@contextmanager
def step_progress(total: int) -> Iterator[Callable[[int, str], None]]:
    """A bar over the steps on a terminal; nothing extra otherwise (each step logs)."""
    if not sys.stderr.isatty():
        yield lambda _number, _label: None
        return
    from rich.console import Console  # noqa: PLC0415 - only terminals pay for rich
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    lock = threading.Lock()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("bench", total=total)

        def advance(number: int, label: str) -> None:
            with lock:
                bar.update(task, completed=number - 1, description=f"bench: {label}")

        yield advance
        bar.update(task, completed=total)
