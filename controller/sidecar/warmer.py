"""The sidecar's warm: the pre-warm in a thread (cancelled through a threading.Event) and its
kind=prewarm sample, then mlock and keep-warm when asked for: one task, stopped as one.

The app starts it once (``start``), reads what it did from the state it keeps up to date
(``SidecarState.warm``, ``.mlock``, ``.keepwarm``, for the gate, /status and the metrics)
and from ``prewarm_sample``, and stops it on the way out: the sidecar's stop event ends its
steps and its keep-warm loop, ``stop`` cancels its threads and waits for its sample, then
``unlock`` and ``close`` once nothing else needs the weights or the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog

from controller.memguard import MemoryGuard
from controller.prewarm import PrewarmProgress, PrewarmResult, prewarm
from controller.sidecar.gate import GateKind, WarmPhase
from controller.sidecar.keepwarm import KeepWarm, PassResult
from controller.sidecar.mlock import MlockError, WeightLock, why_not_affordable, why_not_permitted
from controller.sidecar.record import SampleContext, SampleWriter, prewarm_sample
from controller.sidecar.settings import SidecarConfig
from controller.sidecar.startup import ENGINE_WAIT_SECONDS, StartupProfiler
from controller.sidecar.state import SidecarState
from controller.units import format_bytes, format_rate
from exporter.residency import ResidencyProbe
from exporter.samples import Sample

log = structlog.get_logger("pagewarm")

# A warm stuck in a syscall (a hung network filesystem) must not hold the exit forever.
SHUTDOWN_WARM_GRACE_SECONDS = 20.0


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True when ``stop`` is set (at once when it is set meanwhile)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class Warmer:
    def __init__(
        self,
        config: SidecarConfig,
        *,
        state: SidecarState,
        probe: ResidencyProbe,
        writer: SampleWriter,
        stop: asyncio.Event,
        on_warm_finished: Callable[[], None],
    ) -> None:
        self.profiler = StartupProfiler(
            config, state.startup, probe=probe, cancel=threading.Event()
        )
        self.config = config
        self.state = state
        self.probe = probe
        self.writer = writer
        self.stop_event = stop  # the sidecar is stopping (SIGTERM, or a task ended)
        self.on_warm_finished = on_warm_finished  # the gate looks again at once
        # The threads' stop signal (warm, replay, keep-warm).
        self.cancel_event = self.profiler.cancel
        self.weight_lock = WeightLock()
        self.prewarm_sample: Sample | None = None  # once recorded
        self.stuck = False  # a thread that would block the exit (see stop)
        self._keepwarm_note: str | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pagewarm-warm")
        self._task: asyncio.Task[None] | None = None
        self._context: SampleContext | None = None

    # Lifecycle ----------------------------------------------------------------------------

    def start(self, context: SampleContext) -> None:
        """Start the warm; its pre-warm sample is recorded with ``context``."""
        self._context = context
        self._task = asyncio.create_task(self._warm(), name="warm")

    def cancel(self) -> None:
        """Ask the warm's and keep-warm's threads to stop (they check between steps)."""
        self.cancel_event.set()

    async def stop(self) -> None:
        """Cancel, and wait for the warm to record its sample; a warm stuck in a syscall is
        abandoned after a grace period (``stuck``)."""
        self.cancel()
        if self._task is None:
            return
        # The warm returns soon after the cancel (it checks between steps) and records its
        # sample; it is only abandoned when stuck in a syscall.
        try:
            await asyncio.wait_for(asyncio.shield(self._task), SHUTDOWN_WARM_GRACE_SECONDS)
        except TimeoutError:
            # Its thread cannot be interrupted: the command exits without waiting for it.
            self.stuck = True
            log.error(  # noqa: TRY400 - a timeout has no traceback worth showing
                "pre-warm did not stop in time (stuck in a read?): its sample is skipped"
            )
            self._task.cancel()

    async def unlock(self) -> None:
        if self.weight_lock.locked_bytes:
            await asyncio.to_thread(self.weight_lock.unlock)
            self.state.mlock.locked_bytes = 0
            log.info("weights unlocked")

    async def close_profiler(self) -> None:
        """After ``stop``: a recording or late replay ends (the cancel is set by then)."""
        await self.profiler.close()

    def close(self) -> None:
        """Release the warm's thread (not waited for when it is stuck)."""
        self._executor.shutdown(wait=not self.stuck)

    # The warm, mlock, keep-warm -------------------------------------------------------------

    async def _warm(self) -> None:
        try:
            await self._warm_steps()
        except Exception as exc:  # keep serving (the gate opens on a failed warm): say so
            log.exception("warm task failed", error=str(exc))
            if not self.state.warm.phase.finished:
                self.state.warm.phase = WarmPhase.FAILED
                self.state.warm.detail = f"warm task failed: {exc}"

    async def _warm_steps(self) -> None:
        settings = self.config.settings
        profiler = self.profiler
        if settings.prewarm_enabled:
            # The warm, a start-up profile's replay included, began now: a vLLM start after
            # this is the one it was for (without a pre-warm there is none to claim).
            self.state.warm.started_monotonic = time.monotonic()
            # The residency the warm found: before a replay's small-depth read of the
            # weights brings any in (the sample's mode says how cold the start was).
            before = await asyncio.to_thread(self.probe.measure, self.config.weight_set)
            self.state.warm.ratio_before = before.ratio
            # With --gate none vLLM starts at once: its libraries first, at a small I/O
            # depth, while it imports them; then the weights at full speed (see hold_weights).
            gate_none = self.config.policy.kind is GateKind.NONE
            if gate_none and await profiler.replay(ENGINE_WAIT_SECONDS):
                await profiler.hold_weights()
            await self._prewarm()
        else:
            self.state.warm.phase = WarmPhase.DISABLED
            log.info("pre-warm disabled: the gate opens at once")
        if self.stop_event.is_set():
            return
        # The gate held vLLM back until the weights were in: its libraries once it starts.
        profiler.replay_later()
        if settings.mlock:
            await self._mlock()
        if settings.keep_warm:
            await self._keep_warm()

    async def _prewarm(self) -> None:
        warm = self.state.warm
        ws = self.config.weight_set
        progress = warm.progress = PrewarmProgress(planned_bytes=ws.total_bytes)
        before = await asyncio.to_thread(self.probe.measure, ws)
        if warm.ratio_before is None:
            warm.ratio_before = before.ratio
        warm.phase = WarmPhase.WARMING
        log.info(
            "pre-warm started",
            size_bytes=ws.total_bytes,
            resident_ratio=before.ratio,
            strategy=str(self.config.options.strategy),
            threads=self.config.options.threads,
        )
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._executor, functools.partial(self._run_prewarm, progress)
            )
        except Exception as exc:  # a bug or an unexpected OSError: the gate must still open
            warm.phase, warm.detail = WarmPhase.FAILED, f"pre-warm crashed: {exc}"
            warm.finished_monotonic = time.monotonic()
            log.exception("pre-warm crashed", error=str(exc))
            return
        self._finish_warm(result)
        assert self._context is not None
        sample = prewarm_sample(self._context, result)
        if await self.writer.append(sample):
            self.prewarm_sample = sample
            warm.sample_id = sample.id

    def _run_prewarm(self, progress: PrewarmProgress) -> PrewarmResult:
        guard = MemoryGuard(self.config.reserve_bytes, enabled=self.config.memory_guard)
        return prewarm(
            self.config.weight_set,
            self.config.options,
            probe=self.probe,
            guard=guard,
            cancel=self.cancel_event,
            progress=progress,
        )

    def _finish_warm(self, result: PrewarmResult) -> None:
        warm = self.state.warm
        warm.result = result
        warm.finished_monotonic = time.monotonic()
        fields = {
            "seconds": round(result.seconds, 3),
            "read_bytes": result.read_bytes,
            "throughput": format_rate(result.throughput_bytes_per_second),
            "resident_ratio_after": result.after.ratio,
        }
        for change in result.changed_files:
            log.warning("file changed before its turn", path=change.path, detail=change.describe())
        if result.failure_reason:
            warm.phase, warm.detail = WarmPhase.FAILED, result.failure_reason
            log.error("pre-warm failed", detail=warm.detail, **fields)
        elif result.file_errors:
            warm.phase = WarmPhase.FAILED
            warm.detail = f"{len(result.file_errors)} file(s) not warmed: " + "; ".join(
                f"{e.path}: {e.error}" for e in result.file_errors
            )
            log.error("pre-warm failed for some files", detail=warm.detail, **fields)
        elif result.partial_reason == "cancelled":
            warm.phase, warm.detail = WarmPhase.CANCELLED, "cancelled"
            log.info("pre-warm cancelled", **fields)
        elif result.partial:
            warm.phase, warm.detail = WarmPhase.PARTIAL, result.partial_reason
            log.warning("pre-warm partial", reason=result.partial_reason, **fields)
        else:
            warm.phase = WarmPhase.DONE
            log.info("pre-warm complete", **fields)
        self.on_warm_finished()

    async def _mlock(self) -> None:
        mlock = self.state.mlock
        mlock.requested = True
        ws = self.config.weight_set
        warm = self.state.warm
        reason: str | None = None
        if warm.phase not in (WarmPhase.DONE, WarmPhase.DISABLED):
            reason = f"not locked: the pre-warm did not complete ({warm.phase}: {warm.detail})"
        else:
            residency = await asyncio.to_thread(self.probe.measure, ws)
            memory = await asyncio.to_thread(MemoryGuard(self.config.reserve_bytes).snapshot)
            # The size now (a shard may have changed since the model was found).
            reason = why_not_permitted(residency.size_bytes) or why_not_affordable(
                residency.size_bytes, residency.cached_bytes, memory
            )
        if reason is None:
            try:
                mlock.locked_bytes = await asyncio.to_thread(self.weight_lock.lock, ws)
            except MlockError as exc:
                reason = str(exc)
        if reason is not None:
            mlock.error = reason
            log.warning("weights not locked in memory", reason=reason)
            return
        log.info("weights locked in memory (mlock)", locked_bytes=mlock.locked_bytes)

    async def _keep_warm(self) -> None:
        settings = self.config.settings
        keeper = KeepWarm(
            self.config.weight_set,
            self.probe,
            interval_seconds=settings.keep_warm_interval_seconds,
            rate_limit_bytes_per_second=settings.keep_warm_rate_limit_bytes,
            reserve_bytes=self.config.reserve_bytes,
            memory_guard=self.config.memory_guard,
            cancel=self.cancel_event,
        )
        state = self.state.keepwarm
        state.enabled, state.interval_seconds = True, keeper.interval
        log.info(
            "keep-warm on",
            interval_seconds=keeper.interval,
            rate_limit=format_rate(settings.keep_warm_rate_limit_bytes),
        )
        while not await sleep_or_stop(self.stop_event, keeper.interval):
            result = await asyncio.to_thread(keeper.run_pass)
            if self.stop_event.is_set():
                return
            was_thrashing = state.thrashing
            state.passes += 1
            state.rewarm_bytes_total += result.rewarmed_bytes
            state.last_missing_bytes = result.missing_bytes
            state.thrashing, state.interval_seconds = keeper.thrashing, keeper.interval
            if result.untrusted:
                state.last_note = "residency cannot be measured truthfully: keep-warm stopped"
                log.warning(state.last_note)
                return
            self._report_pass(result, became_thrashing=keeper.thrashing and not was_thrashing)

    def _report_pass(self, result: PassResult, *, became_thrashing: bool) -> None:
        state = self.state.keepwarm
        if result.rewarmed_bytes:
            log.info(
                "re-warmed evicted ranges",
                rewarmed_bytes=result.rewarmed_bytes,
                missing_bytes=result.missing_bytes,
                recently_evicted_bytes=result.recently_evicted_bytes,
                seconds=round(result.seconds, 3),
            )
        note = result.budget_stop or ("; ".join(result.errors) if result.errors else None)
        if became_thrashing:
            note = (
                f"thrash: what keep-warm brought back was evicted again "
                f"({format_bytes(result.recently_evicted_bytes)} recently evicted); backing off "
                f"to every {state.interval_seconds:g} s (the host or pod is short of memory)"
            )
        if note and note != self._keepwarm_note:
            log.warning("keep-warm", note=note)
        self._keepwarm_note = note
        if note:
            state.last_note = note
