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
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFileError(OSError):
    """The path became a FIFO, socket or device after it was listed."""


def _check_regular(fd: int, path: Path | str) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFileError(f"{path} is no longer a regular file")


@contextmanager
def open_regular(path: Path | str) -> Iterator[int]:
    """Open read-only; O_NONBLOCK so that a FIFO swapped in after the scan cannot block
    the open, then refuse anything that is not a regular file."""
    fd = os.open(path, _READ_FLAGS)
    _check_regular(fd, path)
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
        fd = os.open(path, _READ_FLAGS) if self.own else self._open_beneath(path.lstrip("/"))
        _check_regular(fd, path)
        return fd

    def _open_beneath(self, relative: str) -> int:
        how = _OpenHow(_READ_FLAGS, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        name = os.fsencode(relative)
        fd = libc().syscall(SYSCALL_OPENAT2, self.fd, name, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        if ctypes.get_errno() != errno.ENOSYS:
            raise_errno(f"open {relative} in {self.path}")
        return os.open(relative, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd)
