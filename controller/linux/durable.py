"""Writing files that survive a crash or a power cut: whole or not at all, and on disk.

A rename is atomic, but neither the new file's data nor the rename itself is on disk until
it is fsync'd: the file before the rename, its directory after it. A temporary file in the
same directory (a rename cannot cross filesystems) replaces the target in one step, so a
reader sees the old content or the new, never half of it.

The temporary name starts with a dot: readers that list a directory and skip hidden files
(Node Feature Discovery's ``features.d`` among them) never pick up a half-written one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """Make the entries of directory ``path`` (a file created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may take fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomically(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data``, atomically and durably: written to a hidden temporary
    file beside it, fsync'd, renamed over it, and the directory fsync'd. The directory is
    created when missing; ``mode`` is masked by the umask, as ``open`` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)
