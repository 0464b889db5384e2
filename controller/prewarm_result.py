"""What a pre-warm did: bytes read and skipped, why it stopped early or failed, the files
it could not warm and those that changed before their turn."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controller.filechange import FileChange
from exporter.residency import ModelResidency


class Strategy(StrEnum):
    AUTO = "auto"
    POPULATE = "populate"
    READ = "read"


@dataclass(frozen=True, slots=True)
class FileError:
    path: str
    error: str


@dataclass(frozen=True, slots=True)
class PrewarmResult:
    model_path: str
    strategy: Strategy
    strategy_reason: str  # why auto chose it, or "requested"
    threads: int
    size_bytes: int
    resident_before_bytes: int | None  # None: residency could not be measured truthfully
    # What this run brought into the page cache (readahead included; all it touched when
    # residency could not be measured), and what was resident before it started.
    read_bytes: int
    skipped_resident_bytes: int
    seconds: float
    budget_bytes: int | None  # None: the memory guard was off
    partial_reason: str | None  # set when the budget or a cancel stopped the warm early
    file_errors: tuple[FileError, ...]
    after: ModelResidency
    # Files that were not as found when their turn came, warmed as they are now.
    changed_files: tuple[FileChange, ...] = ()
    # Set when the warm could not make any progress (no memory budget at all).
    failure_reason: str | None = None

    @property
    def partial(self) -> bool:
        return self.partial_reason is not None

    @property
    def failed(self) -> bool:
        """The warm did not do what it was run for: files not warmed, or nothing at all."""
        return bool(self.file_errors) or self.failure_reason is not None

    @property
    def throughput_bytes_per_second(self) -> float:
        return self.read_bytes / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "strategy": str(self.strategy),
            "strategy_reason": self.strategy_reason,
            "threads": self.threads,
            "size_bytes": self.size_bytes,
            "resident_before_bytes": self.resident_before_bytes,
            "read_bytes": self.read_bytes,
            "skipped_resident_bytes": self.skipped_resident_bytes,
            "seconds": round(self.seconds, 6),
            "throughput_bytes_per_second": round(self.throughput_bytes_per_second),
            "budget_bytes": self.budget_bytes,
            "partial": self.partial,
            "partial_reason": self.partial_reason,
            "failed": self.failed,
            "failure_reason": self.failure_reason,
            "file_errors": [{"path": e.path, "error": e.error} for e in self.file_errors],
            "changed_files": [c.to_dict() for c in self.changed_files],
            "resident_after_bytes": self.after.cached_bytes,
            "resident_after_ratio": self.after.ratio,
            "residency_trusted": self.after.trusted,
            "residency_unknown_reasons": list(self.after.unknown_reasons),
        }
