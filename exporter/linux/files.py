"""Opening files that a listing found, without ever blocking on one that is not regular."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# O_NONBLOCK: a FIFO swapped in after the scan cannot block the open.
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or directory (a listing may have seen a file)."""


def open_regular_fd(path: Path | str) -> tuple[int, os.stat_result]:
    """Open read-only and fstat; refuse anything that is not a regular file. The caller
    closes the descriptor. (The loop over a node's 10,000 files uses this: a context
    manager costs as much as the cachestat call it wraps.)"""
    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFileError(f"{path} is not a regular file")
    return fd, st


@contextmanager
def open_regular(path: Path | str) -> Iterator[int]:
    """Open read-only (see ``open_regular_fd``); closed on leaving."""
    fd, _ = open_regular_fd(path)
    try:
        yield fd
    finally:
        os.close(fd)
