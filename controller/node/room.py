"""Room for a higher priority: when the memory budget cannot hold what a model misses, the
pages of lower-priority models are dropped (posix_fadvise DONTNEED, as `pagewarm evict`
does), lowest priority first and, within a model, from its end backwards (its last files
first, each from its end: a loader reads the beginning first), only as much as is needed.
So a lower priority is left partial before a higher one lacks pages, whatever order they
were warmed in (a config change that raises a model, DAMON taking a few pages of the
higher one), without dropping whole shards for a few missing pages.

Pages mapped by a process (an engine serving that model) are not dropped by the kernel:
the agent never takes memory from a running server.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from controller.units import MiB
from exporter.linux.files import open_regular
from exporter.residency import FileResidency, ModelResidency, ResidencyProbe

# Dropped a window at a time, found by one cachestat each.
WINDOW_BYTES = 2 * MiB


def make_room(needed_bytes: int, lower: Sequence[ModelResidency], probe: ResidencyProbe) -> int:
    """Drop pages of ``lower`` (lowest priority first) until ``needed_bytes`` are freed
    (or nothing is left to drop); the bytes freed, as cachestat counts them after."""
    freed = 0
    for residency in lower:
        for found in reversed(residency.files):
            if freed >= needed_bytes:
                return freed
            if found.cached_bytes:
                freed += _trim(found, needed_bytes - freed, probe)
    return freed


def _trim(found: FileResidency, wanted: int, probe: ResidencyProbe) -> int:
    """Drop resident windows of one file from its end backwards, about ``wanted`` bytes."""
    freed = 0
    try:
        with open_regular(found.file.path) as fd:
            size = os.fstat(fd).st_size
            last = (size - 1) // WINDOW_BYTES * WINDOW_BYTES if size else -1
            for offset in range(last, -1, -WINDOW_BYTES):
                if freed >= wanted:
                    break
                length = min(WINDOW_BYTES, size - offset)
                cached = probe.cached_bytes(fd, offset, length)
                if cached:
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
                    # Counted after: pages locked for I/O or mapped stay, and free nothing.
                    freed += cached - (probe.cached_bytes(fd, offset, length) or 0)
    except OSError:
        pass  # vanished or unreadable: nothing more of it to free
    return freed
