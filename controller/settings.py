"""Settings of the acting commands, on top of the shared ones (PAGEWARM_* environment).

- ``ControllerSettings``: the pre-warm engine (pre-warm, evict, init, ...);
- ``SchedulerSettings``: where sysfs is (tests point it at a fake tree) and the I/O
  scheduler experiment's journal;
- ``BenchSettings``: timed loads (measure, bench, the sidecar, init).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field

from controller.memguard import DEFAULT_RESERVE_BYTES
from controller.prewarm import DEFAULT_CHUNK_BYTES, DEFAULT_THREADS, Strategy
from controller.profile.replay import DEFAULT_IO_DEPTH
from controller.units import parse_size
from exporter.linux.blockdev import SYSFS
from exporter.settings import CommonSettings


def _size(value: Any) -> Any:
    """A byte count as people write it (4GiB, 512MiB, 1000000): flags and variables alike."""
    return parse_size(value) if isinstance(value, str) else value


def http_url(value: str) -> str:
    """An http(s) URL with a host; refused at start, not after a load's timeout."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {value!r} (e.g. http://127.0.0.1:8000/health)")
    return value.strip()


Size = Annotated[int, BeforeValidator(_size)]
HttpUrl = Annotated[str, AfterValidator(http_url)]
# Parallel readers of a warm (--threads, PAGEWARM_PREWARM_THREADS, bench variants).
Threads = Annotated[int, Field(ge=1, le=256)]


class ControllerSettings(CommonSettings):
    prewarm_strategy: Strategy = Field(default=Strategy.AUTO, description="auto, populate or read.")
    prewarm_threads: Threads = DEFAULT_THREADS
    prewarm_chunk_bytes: Size = Field(default=DEFAULT_CHUNK_BYTES, ge=1 << 20)
    prewarm_reserve_bytes: Size = Field(
        default=DEFAULT_RESERVE_BYTES, ge=0, description="Memory always left free by a warm."
    )
    prewarm_memory_guard: bool = Field(default=True, description="Stop at the memory budget.")
    prewarm_rate_limit_bytes: Size | None = Field(
        default=None, ge=1, description="Bytes per second at most (unset: as fast as it goes)."
    )
    startup_profile_io_depth: int = Field(
        default=DEFAULT_IO_DEPTH,
        ge=1,
        le=64,
        description="Reads in flight in a replay.",
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
    load_url: HttpUrl | None = Field(
        default=None, description="A load ends when this URL answers 200 (vLLM: .../health)."
    )
