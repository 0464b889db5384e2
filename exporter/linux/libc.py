"""The C library, loaded once, with errno kept for every call.

ctypes releases the GIL around foreign calls, which is why blocking work that must run
on several threads at once (madvise on many ranges) goes through here and not through
the mmap module, which holds the GIL while the kernel reads.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

_MAP_FAILED = ctypes.c_void_p(-1).value


@cache
def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib


def raise_errno(what: str) -> None:
    """Raise the OSError that the last failed libc call left in errno."""
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


@contextmanager
def mapped(fd: int, offset: int, length: int) -> Iterator[int]:
    """A read-only shared mapping of [offset, offset+length) of ``fd``; yields its address.

    Nothing here touches the mapped memory from Python, so a file truncated meanwhile
    makes the syscalls fail (EFAULT/ENOMEM) instead of killing the process with SIGBUS."""
    lib = libc()
    addr = lib.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
    if addr in (None, _MAP_FAILED):
        raise_errno("mmap")
    try:
        yield addr
    finally:
        lib.munmap(addr, length)
