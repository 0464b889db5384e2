"""mlock of the weights (opt-in): map every weight file read-only and lock the mapping, so the
kernel can evict none of its page-cache pages while the sidecar runs; unlocked and unmapped
when it stops (and by the kernel if it dies).

The kernel allows it with CAP_IPC_LOCK (Kubernetes: ``capabilities.add: [IPC_LOCK]``, which
becomes effective only for UID 0), or within RLIMIT_MEMLOCK (often 64 KiB or 8 MiB in
containers). Locked pages cannot be reclaimed, so they must fit the memory budget: the
pages not resident yet within MemAvailable and the cgroup's headroom, and the whole model
plus the reserve within the container's own memory limit (else the sidecar would be
OOM-killed).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import resource
from dataclasses import dataclass
from functools import cache

from controller.memguard import MemorySnapshot
from controller.units import format_bytes
from exporter.linux.files import open_regular
from exporter.linux.libc import libc
from exporter.linux.permissions import CAP_IPC_LOCK, has_capability
from exporter.weightset import WeightSet

_MAP_FAILED = ctypes.c_void_p(-1).value


class MlockError(Exception):
    """The weights cannot be locked here; the message says why and what would allow it."""


@cache
def _lib() -> ctypes.CDLL:
    lib = libc()
    lib.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return lib


def memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes; None: unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def why_not_permitted(size_bytes: int) -> str | None:
    """None when this process may lock ``size_bytes``; else why not and what would help."""
    if has_capability(CAP_IPC_LOCK):
        return None
    limit = memlock_limit()
    if limit is None or limit >= size_bytes:
        return None
    return (
        f"cannot mlock {format_bytes(size_bytes)}: this process lacks CAP_IPC_LOCK and its "
        f"RLIMIT_MEMLOCK is {format_bytes(limit)}; grant IPC_LOCK (Kubernetes: "
        "securityContext.capabilities.add: [IPC_LOCK], effective only when running as UID 0) "
        f"or raise the memlock limit to at least {size_bytes} bytes"
    )


def why_not_affordable(
    size_bytes: int, resident_bytes: int | None, memory: MemorySnapshot
) -> str | None:
    """None when locking the model fits the memory budget; else why not."""
    missing = size_bytes if resident_bytes is None else max(0, size_bytes - resident_bytes)
    if missing > memory.budget_bytes:
        return (
            f"cannot mlock: {format_bytes(missing)} of the model are not resident and the "
            f"memory budget is {format_bytes(memory.budget_bytes)} ({memory.limited_by}, "
            f"reserve {format_bytes(memory.reserve_bytes)})"
        )
    cgroup = memory.cgroup
    if cgroup is not None and cgroup.limit_bytes is not None:
        needed = size_bytes + memory.reserve_bytes
        if needed > cgroup.limit_bytes:
            return (
                f"cannot mlock: the locked model ({format_bytes(size_bytes)}) plus the reserve "
                f"need {format_bytes(needed)}, the memory cgroup limit is "
                f"{format_bytes(cgroup.limit_bytes)}: locked pages cannot be reclaimed, the "
                "container would be OOM-killed"
            )
    return None


@dataclass(frozen=True, slots=True)
class _Locked:
    address: int
    length: int


class WeightLock:
    """The locked mappings of one weight set (blocking calls: run them in a thread)."""

    def __init__(self) -> None:
        self._locked: list[_Locked] = []

    @property
    def locked_bytes(self) -> int:
        return sum(m.length for m in self._locked)

    def lock(self, weight_set: WeightSet) -> int:
        """Lock every file; all or nothing (what was locked is undone on a failure)."""
        try:
            for wf in weight_set.files:
                with open_regular(wf.path) as fd:
                    self._lock_file(fd)
        except OSError as exc:
            self.unlock()
            raise MlockError(f"mlock failed: {exc.strerror or exc}") from None
        return self.locked_bytes

    def _lock_file(self, fd: int) -> None:
        length = os.fstat(fd).st_size
        if length == 0:
            return
        lib = _lib()
        address = lib.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap: {os.strerror(err)}")
        if lib.mlock(address, length) != 0:
            err = ctypes.get_errno()
            lib.munmap(address, length)
            raise OSError(err, f"mlock: {os.strerror(err)}")
        self._locked.append(_Locked(address, length))

    def unlock(self) -> None:
        lib = _lib()
        while self._locked:
            mapping = self._locked.pop()
            lib.munlock(mapping.address, mapping.length)
            lib.munmap(mapping.address, mapping.length)
