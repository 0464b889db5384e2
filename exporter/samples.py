"""The load-sample schema and a tolerant reader of the JSONL store.

One module defines what a sample is, for both sides: the controller appends samples
(``controller.samplestore``), the exporter reads them into metrics. A sample is one JSON
object per line. Fields a newer version adds are kept (``extra="allow"``) and written back
unchanged; a torn last line (a writer killed mid-append) is skipped, not fatal.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1


class SampleKind(StrEnum):
    LOAD = "load"  # a model load was timed
    PREWARM = "prewarm"  # a pre-warm run


class Mode(StrEnum):
    """The page-cache state a load started from."""

    COLD = "cold"  # evicted, no pre-warm
    WARM = "warm"  # resident because of an earlier load
    PREWARM_COLD = "prewarm_cold"  # evicted, then pre-warmed, then loaded
    PREWARM_WARM = "prewarm_warm"  # pre-warm of an already warm cache, then loaded
    PARTIAL = "partial"  # partly resident (the sidecar saw neither cold nor warm)
    NONE = "none"  # not a load (pre-warm samples)


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


def _now() -> datetime:
    return datetime.now(UTC)


class Sample(BaseModel):
    """One measured event. Durations in seconds, sizes in bytes, ratios 0..1."""

    model_config = ConfigDict(extra="allow", use_enum_values=False)

    schema_version: int = Field(default=SCHEMA_VERSION, alias="schema")
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    kind: SampleKind = SampleKind.LOAD
    timestamp: datetime = Field(default_factory=_now)  # when the event ended (UTC)
    host: str = Field(default_factory=socket.gethostname)
    source: str = "measure"  # which command recorded it: measure, bench, sidecar, init
    model: str  # the model's name (a label in metrics)
    model_path: str = ""
    model_bytes: int | None = None
    device: str | None = None
    scheduler: str | None = None
    fstype: str | None = None
    mode: Mode = Mode.NONE
    declared_mode: Mode | None = None  # what the caller said, when it differs from `mode`
    loader: str = ""
    seconds: float  # load (or pre-warm) duration
    resident_ratio_before: float | None = None
    resident_ratio_after: float | None = None
    prewarm_seconds: float | None = None  # the pre-warm that preceded a load
    outcome: Outcome = Outcome.OK
    error: str | None = None
    # True: the measured residency before the load confirmed the mode; False: it
    # contradicted the declared one (kept in `declared_mode`, `mode` is what was measured);
    # None: residency could not be measured truthfully, the mode is as declared.
    mode_verified: bool | None = None
    # Pre-warm samples (kind=prewarm), and on loads that followed a pre-warm (the pre-warm's
    # strategy and threads, so that strategies can be compared); None otherwise.
    strategy: str | None = None
    threads: int | None = None
    bytes_read: int | None = None
    throughput_bytes_per_second: float | None = None
    partial: bool | None = None  # the memory budget (or a cancel) stopped it early
    prewarm_id: str | None = None  # on a load: the id of the pre-warm sample before it
    # How the load was done and where: the URL or command timed (loader url/command).
    target: str | None = None
    # The setup, for reports: kernel release, MemTotal, the device's read-ahead.
    kernel: str | None = None
    memory_total_bytes: int | None = None
    read_ahead_bytes: int | None = None
    # Bench runs: one id per `pagewarm bench`, the round a sample belongs to, and a note
    # on the scheduler experiment (what was switched, or why it was not).
    bench_id: str | None = None
    run_index: int | None = None
    scheduler_note: str | None = None
    # Loads the sidecar started with a start-up profile: its key (engine and model), what
    # became of it (replayed, recorded, ...), and what the replay read and skipped as stale.
    startup_profile: str | None = None
    startup_profile_phase: str | None = None
    startup_profile_read_bytes: int | None = None
    startup_profile_stale_entries: int | None = None

    def to_json_line(self) -> str:
        data = self.model_dump(mode="json", by_alias=True)
        return json.dumps(data, separators=(",", ":"), sort_keys=False) + "\n"

    @property
    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def parse_line(line: str) -> Sample | None:
    """A sample, or None for a blank, torn or invalid line."""
    line = line.strip()
    if not line:
        return None
    try:
        return Sample.model_validate(json.loads(line))
    except (ValueError, ValidationError):
        return None


@dataclass(slots=True)
class _Position:
    device: int
    inode: int
    offset: int
    # The last line read, as it was. A store truncated and refilled past the old offset
    # (logrotate's copytruncate, then new samples) no longer has it there: read it anew.
    last_line: bytes = b""


_LAST_LINE_BYTES = 4096


def _same_file(fd: int, st: os.stat_result, pos: _Position) -> bool:
    if (pos.device, pos.inode) != (st.st_dev, st.st_ino) or st.st_size < pos.offset:
        return False
    size = len(pos.last_line)
    return os.pread(fd, size, pos.offset - size) == pos.last_line


class SampleReader:
    """Reads a growing store incrementally: each ``read_new`` returns the samples appended
    since the last call. A rotated file (new inode) or a truncated one starts over; a
    missing file is an empty store; a partial last line waits for its end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._position: _Position | None = None
        self.invalid_lines = 0

    @property
    def offset(self) -> int:
        """Bytes of the current file read so far."""
        return 0 if self._position is None else self._position.offset

    def read_new(self, max_bytes: int | None = None) -> list[Sample]:
        """The samples appended since the last call. ``max_bytes`` bounds one call's read
        (the rest comes with the next calls), so that a large store is taken in pieces."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._position = None
            return []
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            pos = self._position
            if pos is None or not _same_file(handle.fileno(), st, pos):
                pos = self._position = _Position(st.st_dev, st.st_ino, 0)
            handle.seek(pos.offset)
            data = handle.read(max_bytes) if max_bytes else handle.read()
            if max_bytes and len(data) == max_bytes and b"\n" not in data:
                data += handle.read()  # one line longer than max_bytes: take it whole
        complete, _, _torn = data.rpartition(b"\n")
        if not complete and not data.endswith(b"\n"):
            return []
        pos.offset += len(complete) + 1
        start = complete.rfind(b"\n") + 1
        pos.last_line = (complete[start:] + b"\n")[-_LAST_LINE_BYTES:]
        return list(self._parse(complete))

    def _parse(self, data: bytes) -> Iterator[Sample]:
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            sample = parse_line(raw.decode("utf-8", errors="replace"))
            if sample is None:
                self.invalid_lines += 1
                continue
            yield sample


def read_all(path: Path) -> list[Sample]:
    """Every valid sample in the store (none when it does not exist)."""
    return SampleReader(path).read_new()
