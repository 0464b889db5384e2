"""cachestat(2): page-cache statistics of a file range (Linux 6.5+).

One syscall answers for a whole file in microseconds, and, unlike mincore, it refuses
(EPERM) instead of lying when the caller neither owns the file nor may write it.
"""

from __future__ import annotations

import ctypes
import errno
import os
from enum import StrEnum
from functools import cache
from typing import NamedTuple

from exporter.linux.libc import libc, raise_errno

# New syscalls share one number on every architecture since Linux 5.1 (alpha aside).
SYSCALL_CACHESTAT = 451


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


class PageCounts(NamedTuple):
    """Pages of a range, as cachestat counts them (units: pages, not bytes)."""

    cached: int
    dirty: int
    writeback: int
    evicted: int
    recently_evicted: int


class Availability(StrEnum):
    AVAILABLE = "available"
    KERNEL_TOO_OLD = "kernel_too_old"  # ENOSYS: Linux < 6.5
    BLOCKED = "blocked"  # EPERM for every fd: a seccomp profile denies the syscall


def cachestat(fd: int, offset: int = 0, length: int = 0) -> PageCounts:
    """Page counts of ``fd`` over [offset, offset+length); length 0 means to the end."""
    rng = _Range(offset, length)
    out = _Stat()
    if libc().syscall(SYSCALL_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(out), 0) != 0:
        raise_errno("cachestat")
    return _page_counts(out)


def _page_counts(out: _Stat) -> PageCounts:
    return PageCounts(
        out.nr_cache, out.nr_dirty, out.nr_writeback, out.nr_evicted, out.nr_recently_evicted
    )


class WholeFiles:
    """cachestat over whole files, for a loop over many: the arguments are built once (in
    a loop over a node's 10,000 files, building them per call costs as much as the
    syscall). One instance per thread: calls share its output buffer.

    A loop that cannot afford even this call's frame calls ``syscall(SYSCALL_CACHESTAT,
    fd, *args)`` itself and reads ``out`` (its fields: ``_Stat``'s) after a 0 return."""

    def __init__(self) -> None:
        self.out = _Stat()
        # byref keeps its object alive; the range (0, 0) means the whole file.
        self.args = (ctypes.byref(_Range(0, 0)), ctypes.byref(self.out), 0)
        self.syscall = libc().syscall

    def __call__(self, fd: int) -> PageCounts:
        if self.syscall(SYSCALL_CACHESTAT, fd, *self.args) != 0:
            raise_errno("cachestat")
        return _page_counts(self.out)


@cache
def availability() -> Availability:
    """Probe once per process with an invalid fd: EBADF proves the syscall exists and is
    allowed, so a later EPERM on a real file is the kernel's permission check, not seccomp."""
    try:
        cachestat(-1)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return Availability.KERNEL_TOO_OLD
        if exc.errno == errno.EPERM:
            return Availability.BLOCKED
        return Availability.AVAILABLE
    return Availability.AVAILABLE  # pragma: no cover - fd -1 cannot succeed


def describe_unavailable(state: Availability) -> str:
    if state is Availability.KERNEL_TOO_OLD:
        return f"cachestat(2) needs Linux 6.5+, this kernel is {os.uname().release}"
    return "cachestat(2) is blocked (EPERM for every file): a seccomp profile denies it"
