"""The node's warm map: what one keep-warm pass found, published whole (the metrics,
``/status``, ``--once --json`` and the NFD feature file all read the same snapshot)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controller.node.config import ConfigStatus
from controller.node.labels import warm_label_key


class BackoffReason(StrEnum):
    MEMORY_PRESSURE = "memory_pressure"  # PSI above the threshold: hold off re-reading
    BUDGET = "budget"  # the memory budget is spent: lower priorities are left partial
    THRASHING = "thrashing"  # a model evicted too often is not re-read


@dataclass(frozen=True, slots=True)
class ModelWarmth:
    name: str
    path: str
    priority: int
    size_bytes: int
    resident_bytes: int | None  # None: unknown (see error)
    warm: bool
    thrashing: bool
    evictions_in_window: int
    rewarm_bytes_total: int
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.resident_bytes is None or self.size_bytes == 0:
            return None
        return self.resident_bytes / self.size_bytes

    def document(self) -> dict[str, Any]:
        try:
            label: str | None = warm_label_key(self.name)
        except ValueError:
            label = None
        return {
            "name": self.name,
            "path": self.path,
            "priority": self.priority,
            "label": label,
            "size_bytes": self.size_bytes,
            "resident_bytes": self.resident_bytes,
            "resident_ratio": self.ratio,
            "warm": self.warm,
            "thrashing": self.thrashing,
            "evictions_in_window": self.evictions_in_window,
            "rewarm_bytes_total": self.rewarm_bytes_total,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class NodeMap:
    node: str
    models: tuple[ModelWarmth, ...]
    config: ConfigStatus
    backoffs: dict[str, int]
    budget_bytes: int | None
    memory_pressure: float | None  # PSI some, percent (agent.pressure); None: no PSI
    pressure_source: str | None
    hold_off_seconds_left: float
    passes: int
    last_pass_seconds: float | None
    last_pass_cpu_seconds: float | None
    last_rewarm_bytes: int
    stopped_by: str | None  # why the last pass stopped re-reading early, if it did
    features_file: str | None
    features_error: str | None = None
    warm_threshold: float = 0.95

    def feature_lines(self) -> str:
        return feature_lines(self.models)

    def document(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "warm_threshold": self.warm_threshold,
            "models": [m.document() for m in self.models],
            "config": {
                "source": self.config.source,
                "valid": self.config.valid,
                "error": self.config.error,
                "reloads": self.config.reloads,
            },
            "backoffs": dict(self.backoffs),
            "budget_bytes": self.budget_bytes,
            "memory_pressure_some_percent": self.memory_pressure,
            "memory_pressure_source": self.pressure_source,
            "hold_off_seconds_left": round(self.hold_off_seconds_left, 3),
            "passes": self.passes,
            "last_pass_seconds": self.last_pass_seconds,
            "last_pass_cpu_seconds": self.last_pass_cpu_seconds,
            "last_rewarm_bytes": self.last_rewarm_bytes,
            "stopped_by": self.stopped_by,
            "features_file": self.features_file,
            "features_error": self.features_error,
        }


def feature_lines(models: Iterable[ModelWarmth]) -> str:
    """The NFD local-source file: ``pagewarm.io/warm-<slug>=true`` per warm model."""
    keys = sorted(warm_label_key(m.name) for m in models if m.warm)
    return "".join(f"{key}=true\n" for key in keys)
