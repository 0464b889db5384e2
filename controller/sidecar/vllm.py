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
that split weight loading from the rest of the start (``controller.sidecar.vllm_log``).
The /proc reader is a Linux primitive of its own (``exporter.linux.proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

import aiohttp
import structlog

from controller.sidecar.state import VllmPhase, VllmState
from controller.sidecar.vllm_log import LogFacts, LogTail
from controller.timing import PROBE_TIMEOUT_SECONDS
from exporter.linux.proc import ProcessFinder, ProcessInfo
from exporter.samples import Outcome

log = structlog.get_logger("pagewarm")

# While nothing is loading, /proc and /health are looked at this often.
IDLE_INTERVAL_SECONDS = 0.5
# After a load, this many failed /health probes in a row mean vLLM is gone (where its
# process cannot be seen).
HEALTH_LOST_AFTER_FAILURES = 3


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
    started: Callable[[VllmStart], None]  # again when a gate-open start finds its process
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
        self.hooks.started(upgraded)
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
