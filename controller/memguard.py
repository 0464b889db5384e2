"""How many bytes a pre-warm may add to the page cache without pushing the node or the
pod into memory trouble.

Page cache is charged to the memory cgroup of the process that reads it; when that
cgroup reaches its limit the kernel reclaims, first of all the pages just read. So the
budget is the smaller of MemAvailable and the tightest cgroup headroom, less a reserve,
and the guard re-reads both while the warm runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from exporter.linux.memcg import MemoryCgroup, find_memory_cgroup
from exporter.linux.meminfo import MEMINFO, mem_available_bytes

DEFAULT_RESERVE_BYTES = 256 << 20
# Re-read /proc/meminfo and the cgroup files after this many newly charged bytes.
RECHECK_EVERY_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    mem_available_bytes: int
    cgroup: MemoryCgroup | None
    reserve_bytes: int

    @property
    def budget_bytes(self) -> int:
        room = self.mem_available_bytes
        if self.cgroup is not None and self.cgroup.headroom_bytes is not None:
            room = min(room, self.cgroup.headroom_bytes)
        return max(0, room - self.reserve_bytes)

    @property
    def limited_by(self) -> str:
        cg = self.cgroup
        if (
            cg is not None
            and cg.headroom_bytes is not None
            and (cg.headroom_bytes < self.mem_available_bytes)
        ):
            return f"memory cgroup v{cg.version} limit at {cg.limiting_path}"
        return "MemAvailable"


class MemoryGuard:
    """Hands out byte grants from the budget; thread-safe."""

    def __init__(
        self,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        *,
        enabled: bool = True,
        meminfo: Path = MEMINFO,
        proc_self: Path = Path("/proc/self"),
    ) -> None:
        self.reserve_bytes = reserve_bytes
        self.enabled = enabled
        self._meminfo = meminfo
        self._proc_self = proc_self
        self._lock = threading.Lock()
        self.start = self.snapshot()
        self.granted_bytes = 0
        self._since_check = 0
        self.refused_reason: str | None = None

    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot(
            mem_available_bytes(self._meminfo),
            find_memory_cgroup(self._proc_self),
            self.reserve_bytes,
        )

    @property
    def budget_bytes(self) -> int | None:
        return self.start.budget_bytes if self.enabled else None

    def grant_up_to(self, nbytes: int) -> int:
        """Account up to ``nbytes`` about to enter the page cache and return how many may;
        less than asked once the budget is spent (and 0 from then on), with
        ``refused_reason`` saying why."""
        if not self.enabled or nbytes == 0:
            return nbytes
        with self._lock:
            if self.refused_reason is not None:
                return 0
            self._since_check += nbytes
            if self._since_check >= RECHECK_EVERY_BYTES and not self._still_room():
                return 0
            granted = min(nbytes, self.start.budget_bytes - self.granted_bytes)
            if granted < nbytes:
                self.refused_reason = (
                    f"memory budget reached: {self.start.budget_bytes} bytes "
                    f"({self.start.limited_by}, reserve {self.reserve_bytes})"
                )
            self.granted_bytes += granted
            return granted

    def _still_room(self) -> bool:
        self._since_check = 0
        now = self.snapshot()
        cg = now.cgroup
        if (
            cg is not None
            and cg.headroom_bytes is not None
            and cg.headroom_bytes < self.reserve_bytes
        ):
            self.refused_reason = (
                f"memory cgroup headroom fell to {cg.headroom_bytes} bytes "
                f"(reserve {self.reserve_bytes}) at {cg.limiting_path}"
            )
            return False
        if now.mem_available_bytes < self.reserve_bytes:
            self.refused_reason = (
                f"MemAvailable fell to {now.mem_available_bytes} bytes "
                f"(reserve {self.reserve_bytes})"
            )
            return False
        return True
