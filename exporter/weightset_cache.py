"""Weight sets kept between collections while their directory tree proves them unchanged.

Scanning a model (a stat and a real path per file) costs as much as measuring its
residency: 12 of 25 ms a collection for 1,000 shards here. A weight set is kept while the
model root resolves the same (a Hugging Face ``refs/main``) and every directory of its
scan has the same identity and change times: adding, removing or renaming an entry (a
link re-pointed with ``ln -sf`` too) changes its directory's mtime and ctime, a chmod its
ctime. Timestamps come from a coarse clock, so a scan that saw a directory change less
than a second before it began is not kept (git's "racy" rule), and none is kept longer
than ``WEIGHT_SET_MAX_AGE_SECONDS`` (a file server whose clock lags ours). Files changed
in place need no new scan: residency opens and fstats every file on every collection.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter.weightset import WeightSet, discover, resolve_model_root

WEIGHT_SET_MAX_AGE_SECONDS = 60.0
RACY_NANOSECONDS = 1_000_000_000


DirectoryStamp = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_ctime_ns


def _stamps(directories: Sequence[Path]) -> tuple[DirectoryStamp, ...] | None:
    stamps = []
    for directory in directories:
        try:
            st = directory.stat()
        except OSError:
            return None
        stamps.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


@dataclass(frozen=True, slots=True)
class _KnownWeightSet:
    root: Path  # what the model path resolved to
    stamps: tuple[DirectoryStamp, ...]
    weight_set: WeightSet
    scanned: float  # time.monotonic()


class WeightSetCache:
    """Weight sets kept between collections while their directories prove them unchanged."""

    def __init__(self, max_age_seconds: float = WEIGHT_SET_MAX_AGE_SECONDS) -> None:
        self.max_age_seconds = max_age_seconds
        self._known: dict[Path, _KnownWeightSet] = {}
        self.scans = 0  # full discoveries (tests count them)

    def get(
        self, path: Path, weight_patterns: Sequence[str], metadata_patterns: Sequence[str]
    ) -> WeightSet:
        """The weight set of ``path``; raises what ``discover`` raises."""
        known = self._known.get(path)
        if known is not None and self._still_valid(path, known):
            return known.weight_set
        self._known.pop(path, None)
        started_ns = time.time_ns()
        weight_set = discover(path, weight_patterns, metadata_patterns)
        self.scans += 1
        stamps = _stamps(weight_set.directories)
        if stamps and all(s[3] < started_ns - RACY_NANOSECONDS for s in stamps):
            self._known[path] = _KnownWeightSet(
                weight_set.root, stamps, weight_set, time.monotonic()
            )
        return weight_set

    def _still_valid(self, path: Path, known: _KnownWeightSet) -> bool:
        if time.monotonic() - known.scanned > self.max_age_seconds:
            return False
        try:
            if resolve_model_root(path) != known.root:
                return False
        except OSError:
            return False
        return _stamps(known.weight_set.directories) == known.stamps

    def keep_only(self, paths: Iterable[Path]) -> None:
        """Forget models that are no longer watched."""
        wanted = set(paths)
        for path in [p for p in self._known if p not in wanted]:
            del self._known[path]
