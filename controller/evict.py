"""Evict: drop exactly one model's pages from the page cache (posix_fadvise DONTNEED, per
file: no root needed, nothing else on the host touched), and measure what is left.

Pages that stay resident are mapped by a running process (a serving engine holding the
weights) or still being written back; the result reports them, it does not hide them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from controller.linux.pagecache import drop
from exporter.linux.files import open_regular
from exporter.residency import ModelResidency, ResidencyProbe
from exporter.weightset import WeightSet


@dataclass(frozen=True, slots=True)
class EvictResult:
    before: ModelResidency
    after: ModelResidency
    seconds: float
    errors: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_path": str(self.before.weight_set.root),
            "size_bytes": self.before.size_bytes,
            "resident_before_bytes": self.before.cached_bytes,
            "resident_after_bytes": self.after.cached_bytes,
            "resident_after_ratio": self.after.ratio,
            "trusted": self.after.trusted,
            "seconds": round(self.seconds, 6),
            "errors": [{"path": p, "error": e} for p, e in self.errors],
        }


def evict(weight_set: WeightSet, probe: ResidencyProbe) -> EvictResult:
    before = probe.measure(weight_set)
    started = time.perf_counter()
    errors = []
    for f in weight_set.files:
        try:
            with open_regular(f.path) as fd:
                drop(fd)
        except OSError as exc:
            errors.append((str(f.path), exc.strerror or str(exc)))
    seconds = time.perf_counter() - started
    return EvictResult(before, probe.measure(weight_set), seconds, tuple(errors))
