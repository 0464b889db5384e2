"""Room for a higher priority: when the memory budget cannot hold what a model misses, the
pages of lower-priority models are dropped (posix_fadvise DONTNEED, as `pagewarm evict`
does), lowest priority first and, within a model, its last files first (its first files
stay: a loader reads them first). So a lower priority is left partial before a higher one
lacks pages, whatever order they were warmed in (a config change that raises a model).

Pages mapped by a process (an engine serving that model) are not dropped by the kernel:
the agent never takes memory from a running server.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.linux.pagecache import drop
from exporter.linux.files import open_regular
from exporter.residency import ModelResidency


def make_room(needed_bytes: int, lower: Sequence[ModelResidency]) -> int:
    """Drop pages of ``lower`` (lowest priority first) until about ``needed_bytes`` are
    freed; the bytes that were resident in the files dropped."""
    freed = 0
    for residency in lower:
        for found in reversed(residency.files):
            if freed >= needed_bytes:
                return freed
            if not found.cached_bytes:
                continue
            try:
                with open_regular(found.file.path) as fd:
                    drop(fd)
            except OSError:
                continue  # vanished or unreadable: nothing of it to free
            freed += found.cached_bytes
    return freed
