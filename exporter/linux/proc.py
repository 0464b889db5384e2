"""Processes from /proc: a process's parent, state and start time (``/proc/<pid>/stat``),
its command line, this process's own lineage, and finding processes by command line.

The start time is in clock ticks since boot, read against CLOCK_BOOTTIME (the 10 ms tick is
the precision; /proc/stat's btime is whole seconds). A pid the kernel reuses for a new
process has new start ticks: (pid, start ticks) names one process for its whole life.

A process shows its parent's command line from its fork until its exec (and an empty one
during the exec), with the start ticks it keeps: a finder remembers a command line only once
the process has exec'd. A process can exec more than once (an entrypoint script that ends in
`exec vllm serve ...`): a miss is remembered with the command name, which each exec changes.

The /proc root is a parameter: tests point it at a tree they control.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# PF_FORKNOEXEC and PF_KTHREAD (include/linux/sched.h) in /proc/<pid>/stat's flags.
FORKED_NOT_EXECED, KERNEL_THREAD = 0x40, 0x200000


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    state: str
    start_ticks: int  # clock ticks after boot
    cmdline: str

    def age_seconds(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME) - self.start_ticks / CLOCK_TICKS

    def started_monotonic(self) -> float:
        return time.monotonic() - self.age_seconds()

    def started_wall(self) -> float:
        return time.time() - self.age_seconds()


class Stat(NamedTuple):
    comm: str  # the command name: the executable's (each exec sets it), at most 15 bytes
    ppid: int
    state: str
    start_ticks: int
    flags: int  # the kernel's PF_* flags

    @property
    def execed(self) -> bool:
        """Its command line is its own (a fork shows its parent's until it execs)."""
        return not self.flags & FORKED_NOT_EXECED

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & KERNEL_THREAD)


def read_stat(pid: int, proc: Path = PROC) -> Stat | None:
    """A process's command name, parent, state, start ticks and flags; None when it is gone."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name in parentheses may hold spaces and parentheses: split at the last.
    head, _, tail = raw.rpartition(b")")
    comm, fields = head.partition(b"(")[2].decode(errors="replace"), tail.split()
    try:
        return Stat(comm, int(fields[1]), fields[0].decode(), int(fields[19]), int(fields[6]))
    except (IndexError, ValueError):
        return None


def read_cmdline(pid: int, proc: Path = PROC) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def own_lineage(proc: Path = PROC) -> frozenset[int]:
    """This process and its ancestors."""
    lineage = {os.getpid()}
    pid = os.getppid()
    while pid > 0 and pid not in lineage:
        lineage.add(pid)
        stat = read_stat(pid, proc)
        pid = stat.ppid if stat is not None else 0
    return frozenset(lineage)


@dataclass(frozen=True, slots=True)
class _Decided:
    """Whether one process matched, as its command line read when it was looked at."""

    start_ticks: int
    comm: str
    matches: bool

    def still_holds(self, stat: Stat) -> bool:
        """A match stays (vLLM may retitle itself: setproctitle rewrites both its command
        line and name); a miss holds until the process execs again."""
        if stat.start_ticks != self.start_ticks:
            return False  # the pid now names another process
        return self.matches or stat.comm == self.comm


class ProcessFinder:
    """Finds processes in /proc by their command line (blocking, cheap: one small read per
    process, the command line only for processes not seen exec'd before)."""

    def __init__(self, pattern: re.Pattern[str], proc: Path = PROC) -> None:
        self.pattern = pattern
        self.proc = proc
        # Never ourselves nor a process we run under: a wrapper's command line (`timeout`,
        # `sh -c`) repeats our arguments, the pattern included.
        self.excluded = own_lineage(proc)
        # pid -> what was decided for it: a pid reused by a new process has new start ticks.
        self._known: dict[int, _Decided] = {}

    def scan(self) -> list[ProcessInfo]:
        """Live processes that match and whose parent does not, oldest first."""
        try:
            pids = [int(entry.name) for entry in self.proc.iterdir() if entry.name.isdigit()]
        except OSError:
            return []
        infos: dict[int, ProcessInfo] = {}
        known: dict[int, _Decided] = {}
        for pid in pids:
            stat = read_stat(pid, self.proc)
            if stat is None or pid in self.excluded:
                continue
            previous = self._known.get(pid)
            if previous is not None and previous.still_holds(stat):
                matches, cmdline = previous.matches, ""
                known[pid] = previous
            else:
                cmdline = read_cmdline(pid, self.proc)
                matches = bool(cmdline) and self.pattern.search(cmdline) is not None
                # Remembered once final: a fork shows its parent's until its exec, and none
                # in the middle of it (a kernel thread never has one).
                if stat.kernel_thread or (stat.execed and cmdline):
                    known[pid] = _Decided(stat.start_ticks, stat.comm, matches)
            if matches and stat.state not in ("Z", "X"):
                infos[pid] = ProcessInfo(pid, stat.ppid, stat.state, stat.start_ticks, cmdline)
        self._known = known
        roots = [p for p in infos.values() if p.ppid not in infos]
        return sorted(roots, key=lambda p: (p.start_ticks, p.pid))

    def alive(self, process: ProcessInfo) -> bool:
        stat = read_stat(process.pid, self.proc)
        return (
            stat is not None
            and stat.start_ticks == process.start_ticks
            and stat.state not in ("Z", "X")
        )
