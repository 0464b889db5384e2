"""Statistics of samples: percentiles, the summary of a group of loads, and the grouping of
loads by model, loader, scheduler, mode and pre-warm variant."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exporter.samples import Mode, Outcome, Sample, SampleKind

MODE_ORDER = (Mode.COLD, Mode.PREWARM_COLD, Mode.WARM, Mode.PREWARM_WARM, Mode.PARTIAL)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Stats:
    n: int
    median: float
    p90: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats | None:
        if not values:
            return None
        return cls(
            len(values),
            statistics.median(values),
            percentile(values, 0.9),
            min(values),
            max(values),
        )


@dataclass(frozen=True, slots=True, order=True)
class GroupKey:
    model: str
    loader: str
    scheduler: str
    mode_rank: int
    mode: str
    variant: str  # "strategy:threads" of the pre-warm before the load, "" for none

    @property
    def label(self) -> str:
        return f"{self.mode} ({self.variant})" if self.variant else self.mode


def variant_of(sample: Sample) -> str:
    if sample.strategy is None:
        return ""
    return f"{sample.strategy}:{sample.threads}" if sample.threads else sample.strategy


def _mode_rank(mode: Mode) -> int:
    return MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)


def group_loads(samples: Iterable[Sample]) -> dict[GroupKey, list[Sample]]:
    groups: dict[GroupKey, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.kind is not SampleKind.LOAD:
            continue
        key = GroupKey(
            s.model,
            s.loader,
            s.scheduler or "-",
            _mode_rank(s.mode),
            str(s.mode),
            variant_of(s),
        )
        groups[key].append(s)
    return dict(sorted(groups.items()))


def ok_seconds(samples: Iterable[Sample]) -> list[float]:
    return [s.seconds for s in samples if s.outcome is Outcome.OK]
