"""The load-sample schema and a tolerant reader of the JSONL store.

One module defines what a sample is, for both sides: the controller appends samples
(``controller.samplestore``), the exporter reads them into metrics. A sample is one JSON
object per line. Fields a newer version adds are kept (``extra="allow"``) and written back
unchanged.

The store is read as untrusted input, forever: every line is parsed on its own, and a line
that is not a valid sample (torn by a killed writer, a block of NULs left by a crash, binary
garbage, invalid UTF-8, JSON nested past the parser's recursion limit, a line of megabytes)
is counted and skipped; it never costs the sample after it. Validation guarantees what
every reader relies on: timestamps in UTC (a naive one is taken as UTC, as ``--since``
takes it), finite non-negative durations, sizes that fit 64 bits, text that is Unicode (a
lone surrogate becomes U+FFFD), and extra fields that can be written back. So nothing
unvalidated reaches a report, an archive or a metric.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exporter.linux.files import open_regular

SCHEMA_VERSION = 1
# A sample is well under 2 KiB. A longer line is not one: it is skipped as it is read,
# never held whole in memory.
MAX_LINE_BYTES = 1 << 20
# Nesting an extra field may have: deeper JSON parses, but pydantic refuses to write it
# back (past ~250 levels) and json refuses to parse it (past ~1000).
MAX_EXTRA_DEPTH = 32
# What a count or a size in bytes may be: a 64-bit file offset at most.
Count = Annotated[int, Field(ge=0, le=(1 << 63) - 1)]
Duration = Annotated[float, Field(ge=0, allow_inf_nan=False)]


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
    model_bytes: Count | None = None
    device: str | None = None
    scheduler: str | None = None
    fstype: str | None = None
    mode: Mode = Mode.NONE
    declared_mode: Mode | None = None  # what the caller said, when it differs from `mode`
    loader: str = ""
    seconds: Duration  # load (or pre-warm) duration
    resident_ratio_before: float | None = None
    resident_ratio_after: float | None = None
    prewarm_seconds: Duration | None = None  # the pre-warm that preceded a load
    outcome: Outcome = Outcome.OK
    error: str | None = None
    # True: the measured residency before the load confirmed the mode; False: it
    # contradicted the declared one (kept in `declared_mode`, `mode` is what was measured);
    # None: residency could not be measured truthfully, the mode is as declared.
    mode_verified: bool | None = None
    # Pre-warm samples (kind=prewarm), and on loads that followed a pre-warm (the pre-warm's
    # strategy and threads, so that strategies can be compared); None otherwise.
    strategy: str | None = None
    threads: Count | None = None
    bytes_read: Count | None = None
    throughput_bytes_per_second: float | None = None
    partial: bool | None = None  # the memory budget (or a cancel) stopped it early
    prewarm_id: str | None = None  # on a load: the id of the pre-warm sample before it
    # How the load was done and where: the URL or command timed (loader url/command).
    target: str | None = None
    # The setup, for reports: kernel release, MemTotal, the device's read-ahead.
    kernel: str | None = None
    memory_total_bytes: Count | None = None
    read_ahead_bytes: Count | None = None
    # Bench runs: one id per `pagewarm bench`, the round a sample belongs to, and a note
    # on the scheduler experiment (what was switched, or why it was not).
    bench_id: str | None = None
    run_index: Count | None = None
    scheduler_note: str | None = None
    # Loads the sidecar started with a start-up profile: its key (engine and model), what
    # became of it (replayed, recorded, ...), and what the replay read and skipped as stale.
    startup_profile: str | None = None
    startup_profile_phase: str | None = None
    startup_profile_read_bytes: int | None = None
    startup_profile_stale_entries: int | None = None

    @field_validator("timestamp")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # Naive: UTC, as every writer of this store records it (and as `--since` reads
        # one). Aware and sorted against each other, timestamps never raise TypeError.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp out of range once converted to UTC") from None

    @field_validator("*")
    @classmethod
    def _text_is_unicode(cls, value: Any) -> Any:
        # A lone surrogate (a model path that is not UTF-8, "\udc80" in the JSON) cannot be
        # printed or written as UTF-8: it becomes U+FFFD, as it does in metric labels.
        if not isinstance(value, str):
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # Imported here: exporter.models brings 0.1 s of imports (structlog, pydantic-
            # settings) that a process timing a load must not pay for every sample.
            from exporter.models import label_value  # noqa: PLC0415

            return label_value(value)
        return value

    @model_validator(mode="after")
    def _extras_can_be_written_back(self) -> Self:
        for name, extra in (self.model_extra or {}).items():
            if _depth(extra) > MAX_EXTRA_DEPTH:
                raise ValueError(f"extra field {name!r} nested deeper than {MAX_EXTRA_DEPTH}")
        return self

    def to_json_line(self) -> str:
        data = self.model_dump(mode="json", by_alias=True)
        return json.dumps(data, separators=(",", ":"), sort_keys=False) + "\n"

    @property
    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (0 for a scalar), counted without
    recursion and only up to one level past MAX_EXTRA_DEPTH."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_EXTRA_DEPTH:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_line(raw: bytes) -> Sample | None:
    """A sample, or None for anything that is not one."""
    try:
        return Sample.model_validate(json.loads(raw.decode("utf-8")))
    except (ValueError, RecursionError):
        # UnicodeDecodeError, JSONDecodeError and ValidationError are ValueErrors;
        # RecursionError: JSON nested past the interpreter's recursion limit.
        return None


# A run of NUL bytes: what a crash leaves where a write had not reached the disk. JSON
# text never holds a raw NUL, so the run ends whatever line it cuts into.
_NULS = re.compile(rb"\x00+")
# The bytes before the read offset that are kept to recognise the file on the next read.
_MARK_BYTES = 4096
_READ_BLOCK_BYTES = 64 << 10


@dataclass(slots=True)
class _Position:
    device: int
    inode: int
    offset: int
    # The bytes just before ``offset``, as they were. A store truncated and refilled past
    # the old offset (logrotate's copytruncate, then new samples) no longer has them there:
    # it is read anew.
    mark: bytes = b""
    # ``offset`` is inside a line longer than MAX_LINE_BYTES (already counted as invalid):
    # what follows, up to its newline, is skipped.
    in_long_line: bool = False


def _same_file(fd: int, st: os.stat_result, pos: _Position) -> bool:
    if (pos.device, pos.inode) != (st.st_dev, st.st_ino) or st.st_size < pos.offset:
        return False
    size = len(pos.mark)
    return os.pread(fd, size, pos.offset - size) == pos.mark


class SampleReader:
    """Reads a growing store incrementally: each ``read_new`` returns the samples appended
    since the last call. A rotated file (new inode) or a truncated one starts over; a
    missing file is an empty store; a partial last line waits for its end. A store that
    is not a regular file (a directory, a FIFO that would block) raises OSError."""

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
            with open_regular(self.path) as fd:
                return self._read_from(fd, max_bytes)
        except FileNotFoundError:
            self._position = None
            return []

    def _read_from(self, fd: int, max_bytes: int | None) -> list[Sample]:
        st = os.fstat(fd)
        pos = self._position
        if pos is None or not _same_file(fd, st, pos):
            pos = self._position = _Position(st.st_dev, st.st_ino, 0)
        samples: list[Sample] = []
        start = pos.offset
        pending = b""  # the start of a line whose end is not read yet
        while max_bytes is None or pos.offset - start < max_bytes:
            block = os.pread(fd, _READ_BLOCK_BYTES, pos.offset + len(pending))
            if not block:
                break
            data = pending + block
            if pos.in_long_line:
                end = data.find(b"\n")
                pos.offset += len(data) if end < 0 else end + 1
                pos.in_long_line = end < 0
                pending = b""
                continue
            complete, newline, pending = data.rpartition(b"\n")
            if newline:
                samples.extend(self._parse(complete))
                pos.offset += len(complete) + 1
            if len(pending) > MAX_LINE_BYTES:
                self.invalid_lines += 1
                pos.offset += len(pending)
                pos.in_long_line, pending = True, b""
        pos.mark = os.pread(
            fd, min(_MARK_BYTES, pos.offset), pos.offset - min(_MARK_BYTES, pos.offset)
        )
        return samples

    def _parse(self, data: bytes) -> Iterator[Sample]:
        for line in data.split(b"\n"):
            pieces = [line]
            if b"\x00" in line:
                self.invalid_lines += 1  # the NULs themselves: a sign of a crash
                pieces = _NULS.split(line)
            for piece in pieces:
                if not piece.strip():
                    continue
                sample = parse_line(piece)
                if sample is None:
                    self.invalid_lines += 1
                    continue
                yield sample


def read_all(path: Path) -> list[Sample]:
    """Every valid sample in the store (none when it does not exist)."""
    return SampleReader(path).read_new()
