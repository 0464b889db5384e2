"""The sample vocabulary every command that records samples shares (measure, bench, the
sidecar, init) and the report reads: what a residency ratio means as a mode, where a
sample was taken (``Setup``, the sample header), and what a pre-warm sample says.

Mode thresholds are named values, not defaults: the bench and the sidecar measure at
different moments and use different ones (see ``SIDECAR_THRESHOLDS``), and whoever labels
a ratio says which it uses.
"""

from __future__ import annotations

import platform
import socket
from dataclasses import dataclass
from pathlib import Path

from controller.prewarm import PrewarmResult
from exporter.linux.blockdev import Storage, read_block_device, storage_for_path
from exporter.linux.meminfo import read_meminfo
from exporter.samples import Mode, Outcome, Sample, SampleKind
from exporter.weightset import WeightSet

PREWARM_MODES = (Mode.PREWARM_COLD, Mode.PREWARM_WARM)
SIDECAR_SOURCE = "sidecar"


class ModeError(Exception):
    """No mode was declared and none can be derived (printed for the user, exit status 2)."""


# Mode thresholds ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModeThresholds:
    """Residency at or below ``cold_max`` is cold, at or above ``warm_min`` warm; in between
    the load started from a partly warm cache."""

    cold_max: float
    warm_min: float


# The bench measures right before each load, moments after it evicted or loaded.
BENCH_THRESHOLDS = ModeThresholds(cold_max=0.02, warm_min=0.98)
# At least 95% resident: a warm start. Lower than the bench's 98% on purpose: the sidecar
# measures at vLLM's start, seconds to minutes after the warm or the last load, and these
# VMs (like many hosts) run a DAMON pageout scheme that takes a few "cold" pages of a fully
# resident model without any memory pressure; keep-warm brings them back.
SIDECAR_THRESHOLDS = ModeThresholds(cold_max=0.02, warm_min=0.95)


def thresholds_for_source(source: str) -> ModeThresholds:
    """The thresholds the command that recorded a sample labels its ratios with."""
    return SIDECAR_THRESHOLDS if source == SIDECAR_SOURCE else BENCH_THRESHOLDS


def mode_for_ratio(ratio: float, thresholds: ModeThresholds) -> Mode:
    """The cache state a residency ratio stands for."""
    if ratio <= thresholds.cold_max:
        return Mode.COLD
    if ratio >= thresholds.warm_min:
        return Mode.WARM
    return Mode.PARTIAL


def derive_mode(
    declared: Mode | None,
    ratio_before: float | None,
    prewarm_ratio_before: float | None = None,
    *,
    prewarmed: bool = False,
    thresholds: ModeThresholds,
) -> tuple[Mode, bool | None]:
    """(mode, verified) from what the caller declared and what was measured.

    ``ratio_before`` is the residency right before the load; ``prewarm_ratio_before`` the
    residency before the pre-warm that preceded it (``prewarmed``). Unknown residency keeps
    the declared mode, unverified; a contradiction yields the measured mode, verified False.
    """
    if declared is None:
        prewarm_before = prewarm_ratio_before if prewarmed else None
        return _undeclared(ratio_before, prewarm_before, thresholds), True
    if declared in PREWARM_MODES:
        if prewarmed and prewarm_ratio_before is not None:
            return _verify_prewarm(declared, prewarm_ratio_before, thresholds)
        # Pre-warmed by someone else (an init container), or residency unknown: what can be
        # checked is that the cache was warm when the load started.
        if ratio_before is None:
            return declared, None
        warm = ratio_before >= thresholds.warm_min
        return (declared, True) if warm else (Mode.PARTIAL, False)
    if ratio_before is None:
        return declared, None
    measured = mode_for_ratio(ratio_before, thresholds)
    return measured, measured is declared


def _undeclared(
    ratio_before: float | None, prewarm_ratio_before: float | None, thresholds: ModeThresholds
) -> Mode:
    if ratio_before is None:
        raise ModeError(
            "the mode cannot be derived: residency is unknown here (see `pagewarm status`); "
            "give --mode"
        )
    if prewarm_ratio_before is not None:
        cold = mode_for_ratio(prewarm_ratio_before, thresholds) is Mode.COLD
        return Mode.PREWARM_COLD if cold else Mode.PREWARM_WARM
    return mode_for_ratio(ratio_before, thresholds)


def _verify_prewarm(
    declared: Mode, prewarm_ratio_before: float, thresholds: ModeThresholds
) -> tuple[Mode, bool]:
    measured = mode_for_ratio(prewarm_ratio_before, thresholds)
    expected = Mode.COLD if declared is Mode.PREWARM_COLD else Mode.WARM
    if measured is expected:
        return declared, True
    if measured is Mode.PARTIAL:
        return Mode.PARTIAL, False
    return (Mode.PREWARM_WARM if declared is Mode.PREWARM_COLD else Mode.PREWARM_COLD), False


# Where a sample was taken -------------------------------------------------------------------


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
class SampleHeader:
    """What every sample of one command says about where it was taken (the one place that
    writes a sample's header: a new ``Setup`` field is added here, for every command)."""

    source: str  # measure, bench, sidecar, init
    model: str
    weight_set: WeightSet
    setup: Setup
    bench_id: str | None = None
    scheduler_note: str | None = None

    def fields(self) -> dict[str, object]:
        setup = self.setup
        return {
            "source": self.source,
            "host": setup.host,
            "model": self.model,
            "model_path": str(self.weight_set.root),
            "model_bytes": self.weight_set.total_bytes,
            "device": setup.device,
            "scheduler": setup.current_scheduler(),
            "fstype": setup.fstype,
            "kernel": setup.kernel,
            "memory_total_bytes": setup.memory_total_bytes,
            "read_ahead_bytes": setup.read_ahead_bytes,
            "bench_id": self.bench_id,
            "scheduler_note": self.scheduler_note,
        }

    def sample(self, fields: dict[str, object]) -> Sample:
        """A sample with this header and ``fields`` (which win over it)."""
        return Sample.model_validate({**self.fields(), **fields})

    def prewarm_sample(self, result: PrewarmResult, extra: dict[str, object]) -> Sample:
        """The kind=prewarm sample of one pre-warm run, with the caller's ``extra`` fields."""
        return self.sample({**prewarm_fields(result, self.weight_set), **extra})


# Pre-warm samples ---------------------------------------------------------------------------


def prewarm_fields(result: PrewarmResult, weight_set: WeightSet) -> dict[str, object]:
    size = weight_set.total_bytes
    failed = result.failed
    problems = [f"{e.path}: {e.error}" for e in result.file_errors]
    problems += [f"{c.path}: {c.describe()}" for c in result.changed_files]
    if result.failure_reason:
        problems.append(result.failure_reason)
    return {
        "kind": SampleKind.PREWARM,
        "model_bytes": result.size_bytes,  # the files as the warm found them, not as listed
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
        "error": "; ".join(problems) or None,
        "strategy": str(result.strategy),
        "strategy_reason": result.strategy_reason,
        "threads": result.threads,
        "bytes_read": result.read_bytes,
        "throughput_bytes_per_second": result.throughput_bytes_per_second,
        "partial": result.partial,
    }


def prewarm_link(prewarm_sample: Sample | None) -> dict[str, object]:
    """The fields a load sample carries about the pre-warm before it (none without one)."""
    if prewarm_sample is None:
        return {}
    return {
        "prewarm_seconds": prewarm_sample.seconds,
        "prewarm_id": prewarm_sample.id,
        "strategy": prewarm_sample.strategy,
        "threads": prewarm_sample.threads,
    }
