"""Opening files that a listing found, without ever blocking on one that is not regular,
and opening absolute paths under another process's root (its container's filesystem)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exporter.linux.libc import libc, raise_errno

# openat2(2), Linux 5.6+ (one number on every architecture since 5.1's unification).
SYSCALL_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
# O_NONBLOCK: a FIFO swapped in after the scan cannot block the open.
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or directory (a listing may have seen a file)."""


def open_regular_fd(path: Path | str) -> tuple[int, os.stat_result]:
    """Open read-only and fstat; refuse anything that is not a regular file. The caller
    closes the descriptor. (The loop over a node's 10,000 files uses this: a context
    manager costs as much as the cachestat call it wraps.)"""
    fd = os.open(path, OPEN_FLAGS)
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


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class FileRoot:
    """The root that absolute paths are opened under: this process's own (``/``) or another
    process's (``/proc/<pid>/root``, its container's filesystem in a pod).

    The root directory is held open, so its paths stay reachable after that process exits.
    Under a foreign root, absolute symbolic links resolve inside it (openat2 with
    RESOLVE_IN_ROOT), never into this process's filesystem; without openat2 (Linux < 5.6)
    the last component is not followed (O_NOFOLLOW)."""

    def __init__(self, path: Path | str = "/", *, same_namespace: bool = True) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        # Our own root directory, seen through our own mount namespace: plain opens. (A
        # process in another mount namespace may have the same root directory, with other
        # mounts on it: ``same_namespace`` says whether it shares ours.)
        self.own = same_namespace and os.path.samestat(os.fstat(self.fd), Path("/").stat())

    def __enter__(self) -> FileRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def host_path(self, path: str) -> str:
        """A path that reaches ``path`` (absolute, in the root) from this process, for
        listing directories; files are opened with ``open``."""
        if self.own:
            return path
        return f"/proc/self/fd/{self.fd}/{path.lstrip('/')}"

    def open(self, path: str) -> int:
        """A read-only descriptor of the regular file ``path`` (absolute, in the root);
        NotRegularFileError for anything else, OSError when it cannot be opened."""
        fd = os.open(path, OPEN_FLAGS) if self.own else self._open_beneath(path.lstrip("/"))
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except BaseException:
            os.close(fd)
            raise
        if not regular:
            os.close(fd)
            raise NotRegularFileError(f"{path} is not a regular file")
        return fd

    def _open_beneath(self, relative: str) -> int:
        how = _OpenHow(OPEN_FLAGS, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        name = os.fsencode(relative)
        fd = libc().syscall(SYSCALL_OPENAT2, self.fd, name, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        if ctypes.get_errno() != errno.ENOSYS:
            raise_errno(f"open {relative} in {self.path}")
        return os.open(relative, OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd)
