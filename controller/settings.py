"""Settings of the acting commands (pre-warm, evict), on top of the shared ones."""

from __future__ import annotations

from pydantic import Field

from controller.memguard import DEFAULT_RESERVE_BYTES
from controller.prewarm import DEFAULT_CHUNK_BYTES, DEFAULT_THREADS, Strategy
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
