"""Weight sets kept between collections while their directory tree proves them unchanged.

Scanning a model (a listing, a stat per file, a real path per link) costs about as much as
measuring its residency, so a node's collection scans only the models whose trees changed.
A weight set is kept while every directory of its scan has the same identity and
timestamps (adding, removing or renaming an entry, a link re-pointed with ``ln -sfn`` too,
changes its directory's mtime and ctime) and the model path resolves the same way (a
Hugging Face ``refs/main`` rewritten, a snapshot added or removed). Checking costs one
stat per directory (two more for a Hugging Face entry), not one per file.

Timestamps are coarse: a change in the same clock tick as the one a scan recorded leaves
the stamps as they were. So a new weight set is confirmed by one more scan once
``SETTLE_SECONDS`` (more than any filesystem's timestamp granularity; FAT's is 2 s) have
passed since its stamps were taken: from then on, any change moves the stamps. The rule
needs no agreement between this host's clock and a file server's. Filesystems that keep
no directory times at all (some FUSE ones) are caught by a slow backstop: no weight set is
kept longer than ``MAX_AGE_SECONDS``, between half and all of it by path, so that a node's
models are not all scanned again in one collection (at a 30 s scrape interval about 2% of
them a collection: a full scan costs about as much as a collection). Files changed in
place need no new scan: residency opens and fstats every file on every collection.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter.weightset import WeightSet, discover, resolve_model_root

SETTLE_SECONDS = 2.5
MAX_AGE_SECONDS = 1800.0

# st_dev, st_ino, st_mtime_ns, st_ctime_ns, st_size; None: the path does not exist.
Stamp = tuple[int, int, int, int, int] | None


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)  # noqa: PTH116 - a str path: pathlib costs more, 1,000s a collection
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


@dataclass(frozen=True, slots=True)
class _Known:
    weight_set: WeightSet
    watched: tuple[str, ...]  # paths whose stamps prove the weight set current
    stamps: tuple[Stamp, ...]
    stamped: float  # time.monotonic() when the stamps were taken
    expires: float  # time.monotonic(): the backstop
    settled: bool  # confirmed by a scan SETTLE_SECONDS after the stamps were taken
    resolve_each_time: bool  # a hub entry without refs/main: newest snapshot wins


def _watched(path: Path, weight_set: WeightSet) -> tuple[tuple[str, ...], bool]:
    """The paths whose stamps decide whether ``weight_set`` of ``path`` is current, and
    whether the model root must be resolved again on every check."""
    directories = tuple(map(str, weight_set.directories))
    snapshots = path / "snapshots"
    if weight_set.root.parent != snapshots:
        return directories, False  # the root is the path itself: its own stamp covers it
    ref = path / "refs" / "main"
    try:
        by_ref = ref.read_text().strip() == weight_set.root.name
    except OSError:
        by_ref = False
    # refs/main is rewritten in place (mtime, size) or replaced (inode); a snapshot added
    # or removed changes the snapshots directory.
    return (str(snapshots), str(ref), *directories), not by_ref


class WeightSetCache:
    """Weight sets kept between collections while their directories prove them unchanged."""

    def __init__(
        self,
        max_age_seconds: float = MAX_AGE_SECONDS,
        settle_seconds: float = SETTLE_SECONDS,
        *,
        cross_filesystems: bool = False,
    ) -> None:
        self.max_age_seconds = max_age_seconds
        self.cross_filesystems = cross_filesystems
        self.settle_seconds = settle_seconds
        self._known: dict[Path, _Known] = {}
        self.scans = 0  # full discoveries (tests count them)

    def get(
        self, path: Path, weight_patterns: Sequence[str], metadata_patterns: Sequence[str]
    ) -> WeightSet:
        """The weight set of ``path``; raises what ``discover`` raises."""
        known = self._known.get(path)
        now = time.monotonic()
        current = known is not None and self._current(path, known)
        if (
            current
            and known is not None
            and now < known.expires
            and (known.settled or now - known.stamped < self.settle_seconds)
        ):
            return known.weight_set
        self._known.pop(path, None)  # a scan that raises leaves nothing behind
        weight_set = discover(
            path, weight_patterns, metadata_patterns, cross_filesystems=self.cross_filesystems
        )
        self.scans += 1
        if known is not None and weight_set == known.weight_set:
            # The same files: keep the object the collectors know (they key what they
            # derived from it on its identity) and let the new copy go.
            weight_set = known.weight_set
        if not weight_set.directories:  # a single file: its stat is the scan
            return weight_set
        watched, resolve_each_time = _watched(path, weight_set)
        stamps = tuple(stamp(p) for p in watched)
        stamped = time.monotonic()
        # Settled: the stamps held from SETTLE_SECONDS before this scan began (or from a
        # settled past) until after it, and it listed everything again in between.
        settled = (
            current
            and known is not None
            and known.stamps == stamps
            and (known.settled or now - known.stamped >= self.settle_seconds)
        )
        self._known[path] = _Known(
            weight_set,
            watched,
            stamps,
            stamped,
            stamped + self._max_age(path),
            settled,
            resolve_each_time,
        )
        return weight_set

    def _max_age(self, path: Path) -> float:
        # Between half and all of the maximum age, fixed per path: spread, reproducible.
        spread = zlib.crc32(os.fsencode(path)) / 0xFFFFFFFF
        return self.max_age_seconds * (0.5 + spread / 2)

    def _current(self, path: Path, known: _Known) -> bool:
        if tuple(map(stamp, known.watched)) != known.stamps:
            return False
        if not known.resolve_each_time:
            return True
        try:
            return resolve_model_root(path) == known.weight_set.root
        except OSError:
            return False

    def keep_only(self, paths: Iterable[Path]) -> None:
        """Forget models that are no longer watched."""
        wanted = set(paths)
        for path in [p for p in self._known if p not in wanted]:
            del self._known[path]
