"""The start-up profile file: which files an engine read while it started, which pages of
each, and in what order; keyed by the engine (its image, or a name given) and the model.

One JSON document (gzip-compressed when the file name ends in ``.gz``; read either way),
validated on load. Entries come in first-touch order; each range carries the recording
round in which it was first seen, so a replay can interleave files as the engine did
(a large shared object is touched during the whole import, small modules in between).

Ranges are page-granular ``[first_page, pages, round]``. A file is identified by
(device, inode, size, mtime_ns). A replay judges staleness by size and mtime, and by the
inode where the device is the same: container image layers are unpacked anew on every
node, and an overlay root gets a new device number at every container start, while a
layer's file keeps its size and mtime (from the image's tar) everywhere.

A ConfigMap holds at most 1 MiB: ``encode`` keeps a profile under a byte budget by
merging nearby ranges of a file, then by dropping the last-touched entries, and counts
what it did in the totals.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from controller.linux.durable import write_atomically

PROFILE_FORMAT = "pagewarm-startup-profile"
SCHEMA_VERSION = 1
# Fits a ConfigMap (1 MiB in all) as text, or gzip'd as binaryData (base64: 4/3).
DEFAULT_MAX_BYTES = 768 << 10
# Merging stops at gaps this large (pages): past it, dropping entries is the better loss.
MAX_MERGE_GAP_PAGES = 256
_GZIP_MAGIC = b"\x1f\x8b"
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")

SeenAs = Literal["mapped", "open", "read"]
Range = tuple[int, int, int]  # first page, pages, round


class ProfileError(Exception):
    """A profile file that cannot be read or used (printed for the user, exit status 2)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileIdentity(_Model):
    device: int
    inode: int
    size: int = Field(ge=0)
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(device=st.st_dev, inode=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def stale_reason(self, st: os.stat_result) -> str | None:
        """Why the file now at this path is not the one recorded (None: it is)."""
        if st.st_size != self.size:
            return f"size changed ({self.size} -> {st.st_size} bytes)"
        if st.st_mtime_ns != self.mtime_ns:
            return "modified since the recording"
        if st.st_dev == self.device and st.st_ino != self.inode:
            return "replaced by another file since the recording"
        return None


class ProfileEntry(_Model):
    path: str  # absolute, in the engine's filesystem
    identity: FileIdentity
    seen_as: SeenAs  # mapped (/proc maps), open (/proc fd) or read (residency only)
    ranges: tuple[Range, ...]

    @field_validator("ranges")
    @classmethod
    def _valid_ranges(cls, ranges: tuple[Range, ...]) -> tuple[Range, ...]:
        for first, pages, round_ in ranges:
            if first < 0 or pages < 1 or round_ < 0:
                raise ValueError(f"invalid range {[first, pages, round_]}")
        return ranges

    @property
    def pages(self) -> int:
        return sum(pages for _, pages, _ in self.ranges)


class ProfileKey(_Model):
    engine: str = Field(min_length=1)  # the engine's image, or a name given
    model: str = Field(min_length=1)

    @property
    def name(self) -> str:
        return f"{self.engine} {self.model}"

    def file_name(self) -> str:
        """A file (and ConfigMap key) name for this key: [A-Za-z0-9._-] only."""
        engine, model = (_SLUG.sub("_", part).strip("._") for part in (self.engine, self.model))
        return f"{engine}--{model}.json.gz"


# The recorder's revision. 1 (files without the field): it missed files smaller than a page
# and files a look fell into the middle of a read of; a sidecar records those again.
RECORDER_REVISION = 2


class Recording(_Model):
    """How the profile was recorded, so that a reader can judge what it may lack."""

    recorder: int = 1  # RECORDER_REVISION of the pagewarm that recorded it
    recorded_at: datetime
    host: str
    kernel: str
    page_size: int = Field(gt=0)
    # residency: deltas and mappings; mappings: only /proc maps and fds (residency could
    # not be read truthfully here: see the note in the recorder).
    method: Literal["residency", "mappings"]
    interval_seconds: float
    rounds: int
    seconds: float
    command: tuple[str, ...] = ()
    # The profile ends where the engine became ready (health), exited, or the time ran out.
    ended_by: str


class Totals(_Model):
    entries: int
    bytes: int
    mapped_entries: int
    open_entries: int
    read_entries: int
    candidate_files: int  # files whose residency was watched
    untrusted_files: int  # ... of which the kernel would not report truthfully
    # Pages of watched files resident before anything of the start-up touched them: a
    # recording on a warm cache cannot attribute them (only mapped and open files count).
    unattributed_resident_bytes: int
    merged_gap_bytes: int = 0  # gaps filled to fit the size budget
    dropped_entries: int = 0  # last-touched entries left out to fit it
    dropped_bytes: int = 0


class StartupProfile(_Model):
    format: Literal["pagewarm-startup-profile"] = "pagewarm-startup-profile"
    schema_version: Literal[1] = Field(default=1, alias="schema")
    key: ProfileKey
    recording: Recording
    totals: Totals
    entries: tuple[ProfileEntry, ...]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def page_size(self) -> int:
        return self.recording.page_size

    def steps(self) -> list[tuple[int, int, int]]:
        """(entry index, offset, length) in bytes, in the order the engine first touched
        them: by round, then entry, then offset."""
        ordered = sorted(
            (round_, index, first, pages)
            for index, entry in enumerate(self.entries)
            for first, pages, round_ in entry.ranges
        )
        page = self.page_size
        return [(index, first * page, pages * page) for _, index, first, pages in ordered]


def outdated_reason(profile: StartupProfile) -> str | None:
    """Why a profile should be recorded again though its key matches, or None."""
    if profile.recording.recorder < RECORDER_REVISION:
        return (
            f"the profile was recorded by an older pagewarm (recorder revision "
            f"{profile.recording.recorder}, now {RECORDER_REVISION}), which missed small "
            "files and some files read while it looked"
        )
    return None


def now() -> datetime:
    return datetime.now(UTC)


# Reading and writing ------------------------------------------------------------------------


def load(path: Path) -> StartupProfile:
    """The profile in ``path`` (plain or gzip'd JSON); ProfileError when unusable."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(
            f"cannot read the start-up profile {path}: {exc.strerror or exc}"
        ) from None
    return decode(raw, str(path))


def decode(raw: bytes, where: str = "profile") -> StartupProfile:
    try:
        text = gzip.decompress(raw) if raw.startswith(_GZIP_MAGIC) else raw
        document = json.loads(text)
    except (OSError, EOFError, ValueError) as exc:
        raise ProfileError(
            f"{where} is not a start-up profile (JSON or gzip'd JSON): {exc}"
        ) from None
    if not isinstance(document, dict) or document.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{where} is not a start-up profile (no format {PROFILE_FORMAT!r})")
    if document.get("schema") != SCHEMA_VERSION:
        raise ProfileError(
            f"{where} has schema {document.get('schema')!r}; this pagewarm reads schema "
            f"{SCHEMA_VERSION}: record it again"
        )
    try:
        return StartupProfile.model_validate(document)
    except ValidationError as exc:
        raise ProfileError(f"{where} is not a valid start-up profile: {exc}") from None


def _serialize(profile: StartupProfile, compress: bool) -> bytes:
    text = profile.model_dump_json(by_alias=True).encode()
    # mtime=0: the same profile gives the same bytes (a ConfigMap diff shows real changes).
    return gzip.compress(text, compresslevel=9, mtime=0) if compress else text


def encode(profile: StartupProfile, *, compress: bool, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The file's bytes, at most ``max_bytes``: nearby ranges merged, then the
    last-touched entries dropped, as far as needed (and counted in the totals)."""
    data = _serialize(profile, compress)
    gap = 1
    while len(data) > max_bytes and gap <= MAX_MERGE_GAP_PAGES:
        profile = merge_gaps(profile, gap)
        data = _serialize(profile, compress)
        gap *= 2
    while len(data) > max_bytes and profile.entries:
        # Drop a share of the tail at a time: serialising is the cost here.
        keep = max(0, min(len(profile.entries) - 1, len(profile.entries) * max_bytes // len(data)))
        profile = drop_tail(profile, keep)
        data = _serialize(profile, compress)
    if len(data) > max_bytes:
        raise ProfileError(f"a profile cannot fit in {max_bytes} bytes")
    return data


def save(profile: StartupProfile, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Write atomically (gzip'd when the name ends in .gz); the number of bytes written."""
    data = encode(profile, compress=path.name.endswith(".gz"), max_bytes=max_bytes)
    write_atomically(path, data, mode=0o644)
    return len(data)


# Fitting a size budget ----------------------------------------------------------------------


def _merged(ranges: tuple[Range, ...], gap: int) -> tuple[tuple[Range, ...], int]:
    """Ranges whose gap is at most ``gap`` pages joined (the earlier round kept), and the
    pages the joins added."""
    out: list[list[int]] = []
    added = 0
    for first, pages, round_ in sorted(ranges):
        if out and first - (out[-1][0] + out[-1][1]) <= gap:
            last = out[-1]
            end = max(last[0] + last[1], first + pages)
            added += max(0, first - (last[0] + last[1]))
            last[1], last[2] = end - last[0], min(last[2], round_)
        else:
            out.append([first, pages, round_])
    return tuple((a, b, c) for a, b, c in out), added


def merge_gaps(profile: StartupProfile, gap: int) -> StartupProfile:
    entries, added = [], 0
    for entry in profile.entries:
        ranges, pages = _merged(entry.ranges, gap)
        entries.append(entry.model_copy(update={"ranges": ranges}))
        added += pages
    totals = profile.totals.model_copy(
        update={
            "merged_gap_bytes": profile.totals.merged_gap_bytes + added * profile.page_size,
            "bytes": profile.totals.bytes + added * profile.page_size,
        }
    )
    return profile.model_copy(update={"entries": tuple(entries), "totals": totals})


def drop_tail(profile: StartupProfile, keep: int) -> StartupProfile:
    """The profile with only its first ``keep`` entries (by first touch)."""
    dropped = profile.entries[keep:]
    dropped_bytes = sum(e.pages for e in dropped) * profile.page_size
    totals = profile.totals.model_copy(
        update={
            "entries": keep,
            "bytes": profile.totals.bytes - dropped_bytes,
            "dropped_entries": profile.totals.dropped_entries + len(dropped),
            "dropped_bytes": profile.totals.dropped_bytes + dropped_bytes,
        }
    )
    return profile.model_copy(update={"entries": profile.entries[:keep], "totals": totals})
