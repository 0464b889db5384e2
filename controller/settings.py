"""Settings of the acting commands, on top of the shared ones (PAGEWARM_* environment).

- ``ControllerSettings``: the pre-warm engine (pre-warm, evict, init, ...);
- ``SchedulerSettings``: where sysfs is (tests point it at a fake tree) and the I/O
  scheduler experiment's journal;
- ``BenchSettings``: timed loads (measure, bench, the sidecar, init).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from controller.memguard import DEFAULT_RESERVE_BYTES
from controller.prewarm import DEFAULT_CHUNK_BYTES, DEFAULT_THREADS, Strategy
from exporter.linux.blockdev import SYSFS
from exporter.settings import CommonSettings


class ControllerSettings(CommonSettings):
    prewarm_strategy: Strategy = Field(default=Strategy.AUTO, description="auto, populate or read.")
    prewarm_threads: int = Field(default=DEFAULT_THREADS, ge=1, le=256)
    prewarm_chunk_bytes: int = Field(default=DEFAULT_CHUNK_BYTES, ge=1 << 20)
    prewarm_reserve_bytes: int = Field(
        default=DEFAULT_RESERVE_BYTES, ge=0, description="Memory always left free by a warm."
    )
    prewarm_memory_guard: bool = Field(default=True, description="Stop at the memory budget.")
    prewarm_rate_limit_bytes: int | None = Field(
        default=None, ge=1, description="Bytes per second at most (unset: as fast as it goes)."
    )


def default_journal_path() -> Path:
    """$XDG_STATE_HOME/pagewarm/scheduler-journal.json (~/.local/state/... when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pagewarm" / "scheduler-journal.json"


class SchedulerSettings(ControllerSettings):
    sysfs_root: Path = Field(
        default=SYSFS, description="Where sysfs is mounted (tests point it at a fake tree)."
    )
    scheduler_journal: Path = Field(
        default_factory=default_journal_path,
        description="Records the original I/O schedulers while an experiment runs.",
    )


class BenchSettings(SchedulerSettings):
    load_timeout_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="A timed URL or command load past this is stopped, outcome timed_out.",
    )
