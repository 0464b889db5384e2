"""One timed load (``Measurer.measure``): residency before, the timed load, residency after,
and a sample whose mode is checked against what was measured. ``pagewarm measure`` runs
one; the bench (``controller.bench``) runs many.

What is timed (``LoadTarget``): a built-in loader (``controller.loaders``), a URL until it
answers 200 (optionally from a command's start), or a command to its exit
(``controller.timing``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import structlog

from controller.loaders import Loader, LoaderError, get_loader
from controller.memguard import MemoryGuard
from controller.prewarm import PrewarmOptions, prewarm
from controller.samplestore import SampleStore
from controller.sampling import BENCH_THRESHOLDS, SampleHeader, derive_mode, prewarm_link
from controller.timing import CommandError, Timing, describe_command, time_command, time_url
from exporter.residency import ModelResidency, ResidencyProbe
from exporter.samples import Mode, Outcome, Sample, SampleKind
from exporter.weightset import WeightSet

log = structlog.get_logger("pagewarm")


class MeasureError(Exception):
    """The load cannot be measured as asked (printed for the user, exit status 2)."""


class UnsavedSampleError(Exception):
    """A measurement was taken but the store refused its sample: the caller shows the
    sample so that nothing measured is lost (exit status 1)."""

    def __init__(self, sample: Sample, store: SampleStore, cause: OSError) -> None:
        super().__init__(
            f"sample store {store.path}: cannot be written: {cause.strerror or cause}; "
            "the sample follows on stdout"
        )
        self.sample = sample


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
                raise MeasureError("--loader and --url exclude each other")
            return cls(url=url, command=tuple(command))
        if command:
            if loader:
                raise MeasureError("--loader and a command after -- exclude each other")
            return cls(command=tuple(command))
        target = cls(loader=get_loader(loader or "safetensors"))
        try:
            target.loader.check()  # type: ignore[union-attr]
        except LoaderError as exc:
            raise MeasureError(str(exc)) from None
        return target

    def check_files(self, weight_set: WeightSet) -> None:
        """A built-in loader's files checked before anything is timed or recorded: the wrong
        loader for them, or a corrupt file, is the user's to fix (LoaderError, exit 2)."""
        if self.loader is not None:
            self.loader.check_files(weight_set)

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


@dataclass(frozen=True, slots=True)
class Measurer:
    """Measures loads of one weight set and records each as a sample."""

    header: SampleHeader
    target: LoadTarget
    probe: ResidencyProbe
    store: SampleStore
    timeout: float

    @property
    def weight_set(self) -> WeightSet:
        return self.header.weight_set

    @property
    def model(self) -> str:
        return self.header.model

    def for_bench(self, bench_id: str, scheduler_note: str | None) -> Measurer:
        """This measurer, its samples labelled as one bench run's."""
        return replace(
            self, header=replace(self.header, bench_id=bench_id, scheduler_note=scheduler_note)
        )

    def residency(self) -> ModelResidency:
        return self.probe.measure(self.weight_set)

    def measure(
        self,
        declared: Mode | None,
        *,
        prewarm_sample: Sample | None = None,
        run_index: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Sample:
        before = self.residency()
        timing = self.target.run(self.weight_set, self.timeout, on_progress)
        after = self.residency()
        mode, verified = derive_mode(
            declared,
            before.ratio,
            prewarm_sample.resident_ratio_before if prewarm_sample else None,
            prewarmed=prewarm_sample is not None,
            thresholds=BENCH_THRESHOLDS,
        )
        sample = self.header.sample(
            {
                "kind": SampleKind.LOAD,
                # As measured before this load, not when the weight set was found: a shard
                # may have changed between a bench's runs.
                "model_bytes": before.size_bytes,
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
                **prewarm_link(prewarm_sample),
            }
        )
        self._record(sample)
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
        sample = self.header.prewarm_sample(result, {"run_index": run_index})
        self._record(sample)
        return sample

    def _record(self, sample: Sample) -> None:
        try:
            self.store.append(sample)
        except OSError as exc:
            raise UnsavedSampleError(sample, self.store, exc) from exc


def _warn_about(
    sample: Sample, before: ModelResidency, after: ModelResidency, target: LoadTarget
) -> None:
    if sample.mode_verified is False:
        log.warning(
            "load was not in the declared state: recorded with the measured mode",
            declared_mode=str(sample.declared_mode),
            mode=str(sample.mode),
            resident_ratio_before=rounded(before.ratio),
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
        and after.ratio < BENCH_THRESHOLDS.warm_min
    ):
        log.warning(
            "after the load the model is not resident: memory too small for it, or pages "
            "were evicted during the load",
            resident_ratio_after=rounded(after.ratio),
        )
    if sample.outcome is not Outcome.OK:
        log.error(
            "load did not succeed",
            outcome=str(sample.outcome),
            error=sample.error,
            seconds=sample.seconds,
        )


def rounded(value: float | None) -> float | None:
    """A ratio or duration as logs show it."""
    return None if value is None else round(value, 4)
