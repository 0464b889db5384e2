"""Opening files that a listing found, without ever blocking on one that is not regular."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or directory (a listing may have seen a file)."""


@contextmanager
def open_regular(path: Path | str) -> Iterator[int]:
    """Open read-only; O_NONBLOCK so that a FIFO swapped in after the scan cannot block
    the open, then refuse anything that is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(f"{path} is not a regular file")
        yield fd
    finally:
        os.close(fd)
