"""Timing vLLM from inside its pod: one observation per vLLM start.

Where the pod sets ``shareProcessNamespace: true`` the sidecar sees vLLM's process in /proc:
a process whose command line matches a pattern (and whose parent does not: vLLM's own
workers are not starts) is a start, timed from the moment the kernel created it
(``/proc/<pid>/stat`` starttime, in clock ticks since boot, against CLOCK_BOOTTIME: the
10 ms tick is the precision; /proc/stat's btime is whole seconds). Each new process is one
start, so a crash loop yields one observation per start, and a process that exits before
/health answers 200 is a failed load.

Without that view, the first start is timed from the moment the gate opened (which
includes the kubelet's probe period and container start), and later restarts show only as
/health going away and coming back: they are counted and logged, not timed, because their
start is unknown (a figure that cannot be trusted is not published).

The load ends when /health answers 200. An optional vLLM log file is read for the lines
that split weight loading from the rest of the start; their wording varies by version:

- ``Model loading took 14.9888 GiB and 5.123456 seconds`` (v0.6.4+, V1 engine)
- ``Loading model weights took 12.5523 GB`` (older: memory only)
- ``Loading weights took 3.45 seconds`` (the weight loader itself, v0.7+)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from controller.sidecar.state import VllmPhase, VllmState
from controller.timing import PROBE_TIMEOUT_SECONDS
from exporter.samples import Outcome

log = structlog.get_logger("pagewarm")

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# While nothing is loading, /proc and /health are looked at this often.
IDLE_INTERVAL_SECONDS = 0.5
# After a load, this many failed /health probes in a row mean vLLM is gone (where its
# process cannot be seen).
HEALTH_LOST_AFTER_FAILURES = 3
# Log lines longer than this are not vLLM's timing lines: skipped, never buffered whole.
MAX_LOG_LINE_BYTES = 64 << 10


class TimingOrigin(StrEnum):
    PROCESS_START = "process_start"  # the vLLM process's creation, from /proc
    GATE_OPEN = "gate_open"  # the gate opening (no process view)


def compile_pattern(text: str) -> re.Pattern[str] | None:
    """The process pattern, or None when empty (do not look for vLLM's process)."""
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(
            f"vLLM process pattern {text!r} is not a regular expression: {exc}"
        ) from None


# /proc -------------------------------------------------------------------------------------


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


def read_stat(pid: int, proc: Path = PROC) -> tuple[int, str, int] | None:
    """(ppid, state, start ticks) of a process, None when it is gone."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name in parentheses may hold spaces and parentheses: split at the last.
    fields = raw.rpartition(b")")[2].split()
    try:
        return int(fields[1]), fields[0].decode(), int(fields[19])
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
        pid = stat[0] if stat is not None else 0
    return frozenset(lineage)


class ProcessFinder:
    """Finds vLLM's processes in /proc by their command line (blocking, cheap: one small
    read per process, the command line only for processes not seen before)."""

    def __init__(self, pattern: re.Pattern[str], proc: Path = PROC) -> None:
        self.pattern = pattern
        self.proc = proc
        # Never ourselves nor a process we run under: a wrapper's command line (`timeout`,
        # `sh -c`) repeats our arguments, the pattern included.
        self.excluded = own_lineage(proc)
        # pid -> (start ticks, matches): a pid reused by a new process has new start ticks.
        self._known: dict[int, tuple[int, bool]] = {}

    def scan(self) -> list[ProcessInfo]:
        """Live processes that match and whose parent does not, oldest first."""
        try:
            pids = [int(entry.name) for entry in self.proc.iterdir() if entry.name.isdigit()]
        except OSError:
            return []
        infos: dict[int, ProcessInfo] = {}
        known: dict[int, tuple[int, bool]] = {}
        for pid in pids:
            stat = read_stat(pid, self.proc)
            if stat is None or pid in self.excluded:
                continue
            ppid, state, ticks = stat
            previous = self._known.get(pid)
            if previous is not None and previous[0] == ticks:
                matches, cmdline = previous[1], ""
            else:
                cmdline = read_cmdline(pid, self.proc)
                matches = bool(cmdline) and self.pattern.search(cmdline) is not None
            known[pid] = (ticks, matches)
            if matches and state not in ("Z", "X"):
                infos[pid] = ProcessInfo(pid, ppid, state, ticks, cmdline)
        self._known = known
        roots = [p for p in infos.values() if p.ppid not in infos]
        return sorted(roots, key=lambda p: (p.start_ticks, p.pid))

    def alive(self, process: ProcessInfo) -> bool:
        stat = read_stat(process.pid, self.proc)
        return stat is not None and stat[2] == process.start_ticks and stat[1] not in ("Z", "X")


# The log ------------------------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?)"
_MODEL_LOADING = re.compile(
    rf"(?:Model loading|Loading model weights) took\s+{_NUMBER}\s*(GiB|GB)"
    rf"(?:\s+memory)?(?:\s*(?:and|,)\s*{_NUMBER}\s*s(?:ec(?:ond)?s?)?\b)?",
    re.IGNORECASE,
)
_WEIGHTS_LOADING = re.compile(
    rf"Loading weights took\s+{_NUMBER}\s*s(?:ec(?:ond)?s?)?\b", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class LogFacts:
    """What vLLM's log said about one start (the largest figure where several workers,
    tensor-parallel ranks, each log their own)."""

    model_load_seconds: float | None = None  # "Model loading took X GiB and Y seconds"
    model_memory_gib: float | None = None
    weights_seconds: float | None = None  # "Loading weights took Y seconds"

    def merge(self, other: LogFacts) -> LogFacts:
        return LogFacts(
            _larger(self.model_load_seconds, other.model_load_seconds),
            _larger(self.model_memory_gib, other.model_memory_gib),
            _larger(self.weights_seconds, other.weights_seconds),
        )

    @property
    def empty(self) -> bool:
        return self == LogFacts()

    @property
    def weight_loading_seconds(self) -> float | None:
        """The weight-reading part of the start: the loader's own figure where it logs one,
        else the model load (weights plus model construction)."""
        return self.weights_seconds if self.weights_seconds is not None else self.model_load_seconds

    def sample_fields(self, total_seconds: float) -> dict[str, Any]:
        weights = self.weight_loading_seconds
        return {
            "vllm_model_load_seconds": self.model_load_seconds,
            "vllm_model_memory_gib": self.model_memory_gib,
            "vllm_weights_seconds": weights,
            # The rest of the start: imports, CUDA init, compile, KV cache, the server.
            "vllm_other_seconds": None if weights is None else max(0.0, total_seconds - weights),
        }


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def parse_log_line(line: str) -> LogFacts | None:
    """The timing facts in one line of vLLM's log, or None."""
    if match := _MODEL_LOADING.search(line):
        # Older versions print "GB" for what they computed as bytes / 2**30: GiB either way.
        amount, _unit, seconds = match.groups()
        return LogFacts(float(seconds) if seconds else None, float(amount), None)
    if match := _WEIGHTS_LOADING.search(line):
        return LogFacts(weights_seconds=float(match.group(1)))
    return None


class LogTail:
    """Follows a log file like ``tail -F``: new complete lines since ``mark()``, across
    rotation (the old file is read to its end first) and truncation. A missing file is no
    error (vLLM may create it later)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._partial = b""

    def mark(self) -> None:
        """From now on: skip what the file holds already."""
        self.close()
        self._open(at_end=True)

    def _open(self, *, at_end: bool) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            self._fd = self._identity = None
            return
        st = os.fstat(fd)
        if at_end:
            os.lseek(fd, 0, os.SEEK_END)
        self._fd, self._identity, self._partial = fd, (st.st_dev, st.st_ino), b""

    def read_lines(self) -> list[str]:
        lines = self._drain()
        try:
            st = self.path.stat()
        except OSError:
            return lines
        identity = (st.st_dev, st.st_ino)
        if self._fd is None or identity != self._identity:
            self.close()  # rotated (or created): the new file from its start
            self._open(at_end=False)
            lines += self._drain()
        elif st.st_size < os.lseek(self._fd, 0, os.SEEK_CUR):
            os.lseek(self._fd, 0, os.SEEK_SET)  # truncated
            self._partial = b""
            lines += self._drain()
        return lines

    def _drain(self) -> list[str]:
        if self._fd is None:
            return []
        chunks = [self._partial]
        while block := os.read(self._fd, 1 << 16):
            chunks.append(block)
        data = b"".join(chunks)
        complete, _, rest = data.rpartition(b"\n")
        self._partial = rest if len(rest) <= MAX_LOG_LINE_BYTES else b""
        if not complete and not data.endswith(b"\n"):
            return []
        return [
            line.decode(errors="replace")
            for line in complete.split(b"\n")
            if len(line) <= MAX_LOG_LINE_BYTES
        ]

    def read_facts(self) -> LogFacts:
        facts = LogFacts()
        for line in self.read_lines():
            found = parse_log_line(line)
            if found is not None:
                facts = facts.merge(found)
        return facts

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._identity = None
        self._partial = b""


# /health ------------------------------------------------------------------------------------


class HealthProbe:
    """GET the health URL: (answered 200, what it said)."""

    def __init__(self, url: str, timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def check(self) -> tuple[bool, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(self.url, allow_redirects=False) as response:
                return response.status == 200, f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, str(exc) or type(exc).__name__

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# One start, one observation -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VllmStart:
    index: int  # 1 for the first start this sidecar saw
    origin: TimingOrigin
    started_monotonic: float
    started_wall: float
    ratio_at_start: float | None  # residency when the start was seen
    process: ProcessInfo | None = None


@dataclass(frozen=True, slots=True)
class LoadObservation:
    start: VllmStart
    outcome: Outcome
    seconds: float
    error: str | None = None
    log: LogFacts = field(default_factory=LogFacts)
    ended_monotonic: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class WatcherHooks:
    """What the watcher needs from the sidecar: residency now, and where results go."""

    measure_ratio: Callable[[], Awaitable[float | None]]
    started: Callable[[VllmStart], None]
    finished: Callable[[LoadObservation], Awaitable[None]]
    already_serving: Callable[[], None]  # vLLM was serving before the sidecar started


class VllmWatcher:
    def __init__(
        self,
        *,
        health: HealthProbe,
        finder: ProcessFinder | None,
        log_tail: LogTail | None,
        state: VllmState,
        hooks: WatcherHooks,
        gate_opened: asyncio.Event,
        gate_opened_at: Callable[[], tuple[float, float]],
        load_timeout_seconds: float,
        poll_interval_seconds: float,
    ) -> None:
        self.health = health
        self.finder = finder
        self.log_tail = log_tail
        self.state = state
        self.hooks = hooks
        self.gate_opened = gate_opened
        self.gate_opened_at = gate_opened_at  # (monotonic, wall)
        self.load_timeout = load_timeout_seconds
        self.interval = poll_interval_seconds
        self._seen: set[tuple[int, int]] = set()  # (pid, start ticks) already handled
        # Until the first start: without a process view it is timed from the gate opening.
        self._gate_start_pending = True
        self._no_view_logged = False
        state.process_view = None if finder is not None else False

    async def run(self) -> None:
        """Until cancelled: wait for a start, time it, hand the observation over."""
        await self._skip_already_serving()
        while True:
            start = await self._next_start()
            observation = await self._time_load(start)
            await self.hooks.finished(observation)
            await self._until_gone(observation)

    # Starts -------------------------------------------------------------------------------

    async def _scan(self) -> list[ProcessInfo]:
        if self.finder is None:
            return []
        return await asyncio.to_thread(self.finder.scan)

    async def _new_process(self) -> ProcessInfo | None:
        for process in await self._scan():
            if (process.pid, process.start_ticks) not in self._seen:
                self._seen.add((process.pid, process.start_ticks))
                self.state.process_view = True
                return process
        return None

    async def _skip_already_serving(self) -> None:
        """A vLLM already serving when the sidecar (re)starts (the kubelet restarts a native
        sidecar on its own) was not seen starting: it is not timed. One still loading is
        (its start time is in /proc)."""
        if not (await self.health.check())[0]:
            return
        processes = await self._scan()
        for process in processes:
            self._seen.add((process.pid, process.start_ticks))
        self._gate_start_pending = False
        self.hooks.already_serving()
        self.state.phase = VllmPhase.READY
        self.state.process_view = bool(processes)
        self.state.pid = processes[0].pid if processes else None
        log.info(
            "vLLM already serving when the sidecar started: this start is not timed",
            pid=self.state.pid,
        )
        if not processes:
            await self._until_health_lost()

    async def _next_start(self) -> VllmStart:
        while True:
            process = await self._new_process()
            if process is not None:
                return await self._begin(TimingOrigin.PROCESS_START, process)
            if self._gate_start_pending and self.gate_opened.is_set():
                return await self._begin(TimingOrigin.GATE_OPEN, None)
            if not self._gate_start_pending and self.state.process_view is False:
                await self._untimed_restart()
            idle = not self._gate_start_pending
            await asyncio.sleep(IDLE_INTERVAL_SECONDS if idle else self.interval)

    async def _begin(self, origin: TimingOrigin, process: ProcessInfo | None) -> VllmStart:
        if self.log_tail is not None:
            await asyncio.to_thread(self.log_tail.mark)
        if process is not None:
            started_monotonic, started_wall = process.started_monotonic(), process.started_wall()
        else:
            started_monotonic, started_wall = self.gate_opened_at()
        self._gate_start_pending = False
        self.state.starts += 1
        self.state.timed_starts += 1
        start = VllmStart(
            index=self.state.starts,
            origin=origin,
            started_monotonic=started_monotonic,
            started_wall=started_wall,
            ratio_at_start=await self.hooks.measure_ratio(),
            process=process,
        )
        self._enter_loading(start)
        self.hooks.started(start)
        log.info(
            "vLLM start seen",
            start=start.index,
            origin=str(origin),
            pid=process.pid if process else None,
            resident_ratio=start.ratio_at_start,
        )
        return start

    def _enter_loading(self, start: VllmStart) -> None:
        self.state.phase = VllmPhase.LOADING
        self.state.pid = start.process.pid if start.process else None
        self.state.timing_origin = str(start.origin)
        self.state.load_started_monotonic = start.started_monotonic

    async def _upgrade(self, start: VllmStart) -> VllmStart:
        """A gate-open start whose process showed up: time it from the process instead."""
        process = await self._new_process()
        if process is None:
            return start
        upgraded = replace(
            start,
            origin=TimingOrigin.PROCESS_START,
            started_monotonic=process.started_monotonic(),
            started_wall=process.started_wall(),
            ratio_at_start=await self.hooks.measure_ratio(),
            process=process,
        )
        self._enter_loading(upgraded)
        log.info("vLLM process seen: timing from its start", pid=process.pid)
        return upgraded

    async def _untimed_restart(self) -> None:
        if not (await self.health.check())[0]:
            return
        self.state.starts += 1
        self.state.untimed_starts += 1
        self.state.phase = VllmPhase.READY
        log.warning(
            "vLLM is serving again after a restart; without a view of its process its start "
            "is unknown, so this load is not timed (set shareProcessNamespace: true on the pod)",
            starts=self.state.starts,
        )
        await self._until_health_lost()

    # The load -----------------------------------------------------------------------------

    async def _time_load(self, start: VllmStart) -> LoadObservation:
        facts = LogFacts()
        last = "no answer yet"
        while True:
            ok, detail = await self.health.check()
            now = time.monotonic()
            facts = facts.merge(await self._log_facts())
            elapsed = now - start.started_monotonic
            if ok:
                return self._observed(start, Outcome.OK, elapsed, None, facts)
            last = detail
            if start.process is not None and not await asyncio.to_thread(
                self._alive, start.process
            ):
                error = (
                    f"vLLM (pid {start.process.pid}) exited after {elapsed:.1f} s, before "
                    f"{self.health.url} answered 200 (last: {last})"
                )
                return self._observed(start, Outcome.FAILED, elapsed, error, facts)
            if elapsed >= self.load_timeout:
                error = (
                    f"{self.health.url} did not answer 200 within {self.load_timeout:g} s "
                    f"(last: {last})"
                )
                return self._observed(start, Outcome.TIMED_OUT, elapsed, error, facts)
            if start.origin is TimingOrigin.GATE_OPEN and self.finder is not None:
                start = await self._upgrade(start)
            await asyncio.sleep(self.interval)

    def _alive(self, process: ProcessInfo) -> bool:
        return self.finder is not None and self.finder.alive(process)

    async def _log_facts(self) -> LogFacts:
        if self.log_tail is None:
            return LogFacts()
        return await asyncio.to_thread(self.log_tail.read_facts)

    def _observed(
        self,
        start: VllmStart,
        outcome: Outcome,
        seconds: float,
        error: str | None,
        facts: LogFacts,
    ) -> LoadObservation:
        if outcome is Outcome.OK:
            self.state.phase = VllmPhase.READY
        elif outcome is Outcome.TIMED_OUT:
            self.state.phase = VllmPhase.NOT_READY
        else:
            self.state.phase = VllmPhase.EXITED
        if start.process is None and self.state.process_view is None:
            self.state.process_view = False
        if self.state.process_view is False and not self._no_view_logged:
            self._no_view_logged = True
            log.warning(
                "vLLM's process is not visible: timed from the gate opening (includes the "
                "kubelet's probe period), restarts are not timed; set "
                "shareProcessNamespace: true on the pod (and check --vllm-process-pattern)",
                pattern=self.finder.pattern.pattern if self.finder else None,
            )
        return LoadObservation(start, outcome, seconds, error, facts)

    # After the load -----------------------------------------------------------------------

    async def _until_gone(self, observation: LoadObservation) -> None:
        """Wait until this start is over: its process exited, or (no view) /health went."""
        start = observation.start
        if observation.outcome is Outcome.FAILED:
            return
        if start.process is not None:
            await self._until_exited(start.process, ready=observation.outcome is Outcome.OK)
        else:
            if observation.outcome is not Outcome.OK:
                await self._until_ready_late()
            await self._until_health_lost()

    async def _until_exited(self, process: ProcessInfo, *, ready: bool) -> None:
        while await asyncio.to_thread(self._alive, process):
            if not ready and (await self.health.check())[0]:
                ready = True
                self.state.phase = VllmPhase.READY
                log.warning("vLLM answered 200 after the load timeout", pid=process.pid)
            await asyncio.sleep(IDLE_INTERVAL_SECONDS)
        self.state.phase = VllmPhase.EXITED
        log.info("vLLM exited", pid=process.pid)

    async def _until_ready_late(self) -> None:
        while True:
            if (await self.health.check())[0]:
                break
            await asyncio.sleep(IDLE_INTERVAL_SECONDS)
        self.state.phase = VllmPhase.READY
        log.warning("vLLM answered 200 after the load timeout")

    async def _until_health_lost(self) -> None:
        failures = 0
        while failures < HEALTH_LOST_AFTER_FAILURES:
            await asyncio.sleep(IDLE_INTERVAL_SECONDS)
            failures = 0 if (await self.health.check())[0] else failures + 1
        self.state.phase = VllmPhase.EXITED
        log.info("vLLM stopped answering", url=self.health.url)

    async def close(self) -> None:
        await self.health.close()
        if self.log_tail is not None:
            with contextlib.suppress(OSError):
                self.log_tail.close()
