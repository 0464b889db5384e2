"""Has a weight file changed since its weight set was found?

A weight set is found once; a warm (or a load, or an eviction) reaches each file seconds or
minutes later. By then a shard may have been truncated, grown, rewritten in place or
replaced by a new file under its name. Whoever opens it compares the open file with what
was found (device, inode, size, modification time) and works on what is there now, saying
what changed rather than reporting a size nobody measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum

from exporter.weightset import WeightFile


class Change(StrEnum):
    REPLACED = "replaced"  # another file (inode) under the name
    TRUNCATED = "truncated"
    GROWN = "grown"
    MODIFIED = "modified"  # same size, written since it was found


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str
    change: Change
    planned_size: int  # when the weight set was found
    size: int  # when the file was opened

    @property
    def size_delta(self) -> int:
        return self.size - self.planned_size

    def describe(self) -> str:
        return (
            f"{self.change} since the weight set was found: {self.planned_size} -> "
            f"{self.size} bytes"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "change": str(self.change),
            "planned_size": self.planned_size,
            "size": self.size,
        }


def change_since_found(wf: WeightFile, opened: os.stat_result) -> FileChange | None:
    """What differs between ``wf`` as found and the file now open (None: the same file)."""
    if (opened.st_dev, opened.st_ino) != (wf.device, wf.inode):
        change = Change.REPLACED
    elif opened.st_size < wf.size:
        change = Change.TRUNCATED
    elif opened.st_size > wf.size:
        change = Change.GROWN
    elif wf.mtime_ns and opened.st_mtime_ns != wf.mtime_ns:
        change = Change.MODIFIED
    else:
        return None
    return FileChange(str(wf.path), change, wf.size, opened.st_size)
