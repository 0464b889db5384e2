"""mincore(2) over a file, window by window.

The fallback when cachestat is missing. It maps at most ``WINDOW_BYTES`` at a time (as
util-linux fincore does), so a 100 GiB shard never needs 100 GiB of address space at once.
Callers must check ``permissions.page_cache_query_trusted`` first: for a file the caller
neither owns nor may write, the kernel reports every page resident.
"""

from __future__ import annotations

import ctypes

from exporter.linux.libc import libc, mapped, page_size, raise_errno

WINDOW_BYTES = 128 << 20

# Only bit 0 of each byte is defined ("resident"); the others are reserved.
_BIT0 = bytes(b & 1 for b in range(256))


def _mincore_window(fd: int, offset: int, length: int) -> bytes:
    vec = (ctypes.c_ubyte * -(-length // page_size()))()
    with mapped(fd, offset, length) as addr:
        if libc().mincore(addr, length, vec) != 0:
            raise_errno("mincore")
    return bytes(vec).translate(_BIT0)


def resident_vectors(fd: int, offset: int, length: int) -> list[bytes]:
    """One byte per page (1 = resident) for [offset, offset+length), window by window."""
    page = page_size()
    if offset % page:
        raise ValueError(f"offset {offset} is not a multiple of the page size {page}")
    out: list[bytes] = []
    end = offset + length
    while offset < end:
        window = min(WINDOW_BYTES, end - offset)
        out.append(_mincore_window(fd, offset, window))
        offset += window
    return out


def resident_pages(fd: int, offset: int, length: int) -> int:
    """Resident pages of ``fd`` in [offset, offset+length). ``offset`` is page-aligned."""
    return sum(v.count(1) for v in resident_vectors(fd, offset, length))
