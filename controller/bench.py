"""Timed loads and the cold/warm bench procedure.

One load (``Measurer.measure``): residency before, the timed load, residency after, and a
sample whose mode is checked against what was measured. The bench repeats that in
randomised complete blocks: every round holds each (mode, scheduler, pre-warm variant)
once, in a seeded random order, so drift (a warming disk, a busy neighbour) cannot favour
one mode.

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

import os
import platform
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import Field

from controller.commands.evict import evict
from controller.loaders import Loader, LoaderError, get_loader
from controller.memguard import MemoryGuard
from controller.prewarm import PrewarmOptions, PrewarmResult, Strategy, prewarm
from controller.samplestore import SampleStore
from controller.scheduler import (
    SchedulerExperiment,
    SchedulerSettings,
    refuse_leftover,
    scheduler_files,
    why_not_switchable,
)
from controller.timing import CommandError, Timing, describe_command, time_command, time_url
from exporter.linux.blockdev import Storage, read_block_device, storage_for_path
from exporter.linux.meminfo import read_meminfo
from exporter.residency import ModelResidency, ResidencyProbe
from exporter.samples import Mode, Outcome, Sample, SampleKind
from exporter.weightset import WeightSet

log = structlog.get_logger("pagewarm")

# Residency before a load at or below this is cold, at or above WARM_MIN_RATIO warm; in
# between the load started from a partly warm cache.
COLD_MAX_RATIO = 0.02
WARM_MIN_RATIO = 0.98
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
DEFAULT_MODES = (Mode.COLD, Mode.WARM, Mode.PREWARM_COLD, Mode.PREWARM_WARM)
SCHEDULER_MODES = (Mode.COLD, Mode.WARM)
PREWARM_MODES = (Mode.PREWARM_COLD, Mode.PREWARM_WARM)


class BenchSettings(SchedulerSettings):
    load_timeout_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="A timed URL or command load past this is stopped, outcome timed_out.",
    )


class BenchError(Exception):
    """The bench cannot run as asked (printed for the user, exit status 2)."""


# Mode derivation ----------------------------------------------------------------------------


def mode_for_ratio(
    ratio: float, *, cold_max: float = COLD_MAX_RATIO, warm_min: float = WARM_MIN_RATIO
) -> Mode:
    """The cache state a residency ratio stands for (the sidecar passes its own warm_min)."""
    if ratio <= cold_max:
        return Mode.COLD
    if ratio >= warm_min:
        return Mode.WARM
    return Mode.PARTIAL


def derive_mode(
    declared: Mode | None,
    ratio_before: float | None,
    prewarm_ratio_before: float | None = None,
    *,
    prewarmed: bool = False,
) -> tuple[Mode, bool | None]:
    """(mode, verified) from what the caller declared and what was measured.

    ``ratio_before`` is the residency right before the load; ``prewarm_ratio_before`` the
    residency before the pre-warm that preceded it (``prewarmed``). Unknown residency keeps
    the declared mode, unverified; a contradiction yields the measured mode, verified False.
    """
    if declared is None:
        return _undeclared(ratio_before, prewarm_ratio_before if prewarmed else None), True
    if declared in PREWARM_MODES:
        if prewarmed and prewarm_ratio_before is not None:
            return _verify_prewarm(declared, prewarm_ratio_before)
        # Pre-warmed by someone else (an init container), or residency unknown: what can be
        # checked is that the cache was warm when the load started.
        if ratio_before is None:
            return declared, None
        return (declared, True) if ratio_before >= WARM_MIN_RATIO else (Mode.PARTIAL, False)
    if ratio_before is None:
        return declared, None
    measured = mode_for_ratio(ratio_before)
    return measured, measured is declared


def _undeclared(ratio_before: float | None, prewarm_ratio_before: float | None) -> Mode:
    if ratio_before is None:
        raise BenchError(
            "the mode cannot be derived: residency is unknown here (see `pagewarm status`); "
            "give --mode"
        )
    if prewarm_ratio_before is not None:
        cold = mode_for_ratio(prewarm_ratio_before) is Mode.COLD
        return Mode.PREWARM_COLD if cold else Mode.PREWARM_WARM
    return mode_for_ratio(ratio_before)


def _verify_prewarm(declared: Mode, prewarm_ratio_before: float) -> tuple[Mode, bool]:
    measured = mode_for_ratio(prewarm_ratio_before)
    expected = Mode.COLD if declared is Mode.PREWARM_COLD else Mode.WARM
    if measured is expected:
        return declared, True
    if measured is Mode.PARTIAL:
        return Mode.PARTIAL, False
    return (Mode.PREWARM_WARM if declared is Mode.PREWARM_COLD else Mode.PREWARM_COLD), False


# Setup and the timed load -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """Where the model lives, recorded on every sample."""

    host: str
    storage: Storage | None
    kernel: str
    memory_total_bytes: int | None
    sysfs: Path

    @classmethod
    def detect(cls, model_path: Path, sysfs: Path) -> Setup:
        try:
            memory: int | None = read_meminfo().get("MemTotal")
        except OSError:
            memory = None
        return cls(
            host=socket.gethostname(),
            storage=storage_for_path(model_path, sysfs=sysfs),
            kernel=platform.release(),
            memory_total_bytes=memory,
            sysfs=sysfs,
        )

    @property
    def device(self) -> str | None:
        if self.storage is None or not self.storage.devices:
            return None
        return ",".join(d.name for d in self.storage.devices)

    @property
    def fstype(self) -> str | None:
        return self.storage.fstype if self.storage else None

    def current_scheduler(self) -> str | None:
        """Read now (an experiment may have switched it)."""
        if self.storage is None or not self.storage.devices:
            return None
        names = {read_block_device(d.name, self.sysfs).scheduler for d in self.storage.devices}
        known = sorted(n for n in names if n)
        return ",".join(known) or None

    @property
    def read_ahead_bytes(self) -> int | None:
        if self.storage is None or not self.storage.devices:
            return None
        return self.storage.devices[0].read_ahead_bytes


@dataclass(frozen=True, slots=True)
class LoadTarget:
    """What is timed: a built-in loader, a URL (optionally from a command's start), or a
    command to its exit."""

    loader: Loader | None = None
    url: str | None = None
    command: tuple[str, ...] = ()

    @classmethod
    def build(cls, loader: str | None, url: str | None, command: Sequence[str]) -> LoadTarget:
        if url:
            if loader:
                raise BenchError("--loader and --url exclude each other")
            return cls(url=url, command=tuple(command))
        if command:
            if loader:
                raise BenchError("--loader and a command after -- exclude each other")
            return cls(command=tuple(command))
        target = cls(loader=get_loader(loader or "safetensors"))
        try:
            target.loader.check()  # type: ignore[union-attr]
        except LoaderError as exc:
            raise BenchError(str(exc)) from None
        return target

    @property
    def name(self) -> str:
        if self.loader is not None:
            return self.loader.name
        return "url" if self.url else "command"

    @property
    def description(self) -> str | None:
        if self.url:
            return f"{self.url} from {describe_command(self.command)}" if self.command else self.url
        return describe_command(self.command) if self.command else None

    def run(
        self,
        weight_set: WeightSet,
        timeout: float,
        on_progress: Callable[[int], None] | None = None,
    ) -> Timing:
        try:
            if self.url:
                return time_url(self.url, self.command or None, timeout=timeout)
            if self.command:
                return time_command(self.command, timeout)
            assert self.loader is not None
            started = time.perf_counter()
            try:
                result = self.loader.load(weight_set, on_progress)
            except (LoaderError, OSError, ValueError, RuntimeError) as exc:
                return Timing(time.perf_counter() - started, Outcome.FAILED, str(exc))
            return Timing(result.seconds, Outcome.OK)
        except CommandError as exc:
            return Timing(0.0, Outcome.FAILED, str(exc))


@dataclass(slots=True)
class Measurer:
    """Measures loads of one weight set and records each as a sample."""

    weight_set: WeightSet
    model: str
    target: LoadTarget
    probe: ResidencyProbe
    store: SampleStore
    setup: Setup
    timeout: float
    source: str = "measure"
    bench_id: str | None = None
    scheduler_note: str | None = None
    on_progress: Callable[[int], None] | None = None

    def residency(self) -> ModelResidency:
        return self.probe.measure(self.weight_set)

    def _base(self) -> dict[str, object]:
        return {
            "source": self.source,
            "host": self.setup.host,
            "model": self.model,
            "model_path": str(self.weight_set.root),
            "model_bytes": self.weight_set.total_bytes,
            "device": self.setup.device,
            "scheduler": self.setup.current_scheduler(),
            "fstype": self.setup.fstype,
            "kernel": self.setup.kernel,
            "memory_total_bytes": self.setup.memory_total_bytes,
            "read_ahead_bytes": self.setup.read_ahead_bytes,
            "bench_id": self.bench_id,
            "scheduler_note": self.scheduler_note,
        }

    def measure(
        self,
        declared: Mode | None,
        *,
        prewarm_sample: Sample | None = None,
        run_index: int | None = None,
    ) -> Sample:
        before = self.residency()
        timing = self.target.run(self.weight_set, self.timeout, self.on_progress)
        after = self.residency()
        mode, verified = derive_mode(
            declared,
            before.ratio,
            prewarm_sample.resident_ratio_before if prewarm_sample else None,
            prewarmed=prewarm_sample is not None,
        )
        sample = Sample.model_validate(
            {
                **self._base(),
                "kind": SampleKind.LOAD,
                "mode": mode,
                "declared_mode": declared if declared is not None and declared != mode else None,
                "mode_verified": verified,
                "loader": self.target.name,
                "target": self.target.description,
                "seconds": timing.seconds,
                "resident_ratio_before": before.ratio,
                "resident_ratio_after": after.ratio,
                "outcome": timing.outcome,
                "error": timing.error,
                "run_index": run_index,
                **_prewarm_link(prewarm_sample),
            }
        )
        self.store.append(sample)
        _warn_about(sample, before, after, self.target)
        return sample

    def prewarm(
        self,
        options: PrewarmOptions,
        guard: MemoryGuard,
        *,
        run_index: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Sample:
        result = prewarm(
            self.weight_set,
            options,
            probe=self.probe,
            guard=MemoryGuard(guard.reserve_bytes, enabled=guard.enabled),
            on_progress=(lambda p: on_progress(p.done_bytes)) if on_progress else None,
        )
        sample = Sample.model_validate(
            {**self._base(), **prewarm_fields(result, self.weight_set), "run_index": run_index}
        )
        self.store.append(sample)
        return sample


def prewarm_fields(result: PrewarmResult, weight_set: WeightSet) -> dict[str, object]:
    size = weight_set.total_bytes
    failed = bool(result.file_errors)
    return {
        "kind": SampleKind.PREWARM,
        "mode": Mode.NONE,
        "loader": "prewarm",
        "seconds": result.seconds,
        "resident_ratio_before": (
            None
            if result.resident_before_bytes is None
            else (result.resident_before_bytes / size if size else 1.0)
        ),
        "resident_ratio_after": result.after.ratio,
        "outcome": Outcome.FAILED if failed else Outcome.OK,
        "error": "; ".join(f"{e.path}: {e.error}" for e in result.file_errors) or None,
        "strategy": str(result.strategy),
        "strategy_reason": result.strategy_reason,
        "threads": result.threads,
        "bytes_read": result.read_bytes,
        "throughput_bytes_per_second": result.throughput_bytes_per_second,
        "partial": result.partial,
    }


def _prewarm_link(prewarm_sample: Sample | None) -> dict[str, object]:
    if prewarm_sample is None:
        return {}
    return {
        "prewarm_seconds": prewarm_sample.seconds,
        "prewarm_id": prewarm_sample.id,
        "strategy": prewarm_sample.strategy,
        "threads": prewarm_sample.threads,
    }


def _warn_about(
    sample: Sample, before: ModelResidency, after: ModelResidency, target: LoadTarget
) -> None:
    if sample.mode_verified is False:
        log.warning(
            "load was not in the declared state: recorded with the measured mode",
            declared_mode=str(sample.declared_mode),
            mode=str(sample.mode),
            resident_ratio_before=_round(before.ratio),
        )
    elif sample.mode_verified is None:
        log.warning(
            "residency unknown: the mode could not be verified",
            mode=str(sample.mode),
            reasons=list(before.unknown_reasons),
        )
    if (
        target.loader is not None
        and sample.outcome is Outcome.OK
        and after.ratio is not None
        and after.ratio < WARM_MIN_RATIO
    ):
        log.warning(
            "after the load the model is not resident: memory too small for it, or pages "
            "were evicted during the load",
            resident_ratio_after=_round(after.ratio),
        )
    if sample.outcome is not Outcome.OK:
        log.error(
            "load did not succeed",
            outcome=str(sample.outcome),
            error=sample.error,
            seconds=sample.seconds,
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


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


@dataclass
class BenchResult:
    bench_id: str
    seed: int
    samples: list[Sample]
    scheduler_note: str | None
    steps: list[Step]


class Bench:
    def __init__(self, measurer: Measurer, config: BenchConfig) -> None:
        self.m = measurer
        self.config = config
        self.samples: list[Sample] = []

    # Preparing the cache for each mode ---------------------------------------------------
    def make_cold(self) -> None:
        result = evict(self.m.weight_set, self.m.probe)
        for path, error in result.errors:
            log.error("file not evicted", path=path, error=error)
        if self.config.drop_caches:
            drop_host_caches()

    def make_warm(self) -> None:
        ratio = self.m.residency().ratio
        if ratio is not None and ratio >= WARM_MIN_RATIO:
            return
        log.info("warming with an unrecorded load first", resident_ratio=_round(ratio))
        timing = self.m.target.run(self.m.weight_set, self.m.timeout)
        if timing.outcome is not Outcome.OK:
            log.error("the warming load failed", error=timing.error)

    def run_step(self, step: Step, on_progress: Callable[[int], None] | None) -> None:
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
            prewarm_sample = self.m.prewarm(
                options, self.config.guard, run_index=step.round, on_progress=on_progress
            )
            self.samples.append(prewarm_sample)
        sample = self.m.measure(step.mode, prewarm_sample=prewarm_sample, run_index=step.round)
        self.samples.append(sample)
        if step.mode in (Mode.COLD, Mode.PREWARM_COLD):
            check_cold(sample, prewarm_sample)

    def run(self) -> BenchResult:
        bench_id = self.m.bench_id or uuid.uuid4().hex[:12]
        self.m.bench_id = bench_id
        experiment = self._experiment()
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
            experiment if experiment is not None else _nothing(),
            step_progress(len(steps)) as advance,
        ):
            for number, step in enumerate(steps, 1):
                if experiment is not None and step.scheduler:
                    experiment.switch(step.scheduler)
                advance(number, step.label)
                self.run_step(step, None)
                _log_step(number, len(steps), step, self.samples[-1])
        return BenchResult(bench_id, self.config.seed, self.samples, self.m.scheduler_note, steps)

    def _experiment(self) -> SchedulerExperiment | None:
        requested = self.config.schedulers
        if not requested:
            return None
        storage = self.m.setup.storage
        files = scheduler_files(storage, self.m.setup.sysfs)
        reason = why_not_switchable(files, storage)
        current = self.m.setup.current_scheduler()
        if reason is not None:
            self.m.scheduler_note = (
                f"scheduler experiment not run: {reason}. It would have tested "
                f"{', '.join(requested)} (cold and warm loads under each); all runs used "
                f"the current scheduler {current or 'none (no block device)'}."
            )
            log.warning(self.m.scheduler_note)
            return None
        refuse_leftover(self.config.journal)
        offered = set(files[0].read()[1])
        unknown = [s for s in requested if s not in offered]
        if unknown:
            raise BenchError(
                f"scheduler {', '.join(unknown)} not offered by {files[0].device} "
                f"(offered: {', '.join(sorted(offered))})"
            )
        self.m.scheduler_note = (
            f"scheduler experiment on {', '.join(f.device for f in files)}: "
            f"{', '.join(requested)}; the original ({current}) was restored afterwards"
        )
        return SchedulerExperiment(files, self.config.journal)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def check_cold(sample: Sample, prewarm_sample: Sample | None) -> None:
    """Say so when a cold run was not cold (the sample already carries the truth)."""
    ratio = prewarm_sample.resident_ratio_before if prewarm_sample else sample.resident_ratio_before
    if ratio is None:
        log.warning(
            "cold run unverified: residency unknown before the load",
            mode=str(sample.declared_mode or sample.mode),
        )
    elif ratio > COLD_MAX_RATIO:
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
        prewarm_seconds=_round(sample.prewarm_seconds),
        resident_before=_round(sample.resident_ratio_before),
        resident_after=_round(sample.resident_ratio_after),
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
