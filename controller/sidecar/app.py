"""The sidecar process: one event loop that serves and coordinates.

Tasks:
- the HTTP server (the exporter's app: /metrics with the exporter's collectors for this model
  plus the sidecar's, /healthz, and /startup, /status);
- the warm: the blocking pre-warm in a thread (cancelled through a threading.Event), its
  kind=prewarm sample, then mlock and keep-warm when asked for;
- the gate: re-evaluated every few tens of milliseconds (and on every /startup) until open;
- the vLLM watcher: one load sample per vLLM start.

SIGTERM or SIGINT: the warm and keep-warm are cancelled, the watcher stops (a load still in
progress is not recorded: its outcome is unknown), appends in flight finish, the weights
are unlocked, the server closes, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from controller.bench import Setup
from controller.memguard import MemoryGuard
from controller.prewarm import PrewarmOptions, PrewarmProgress, PrewarmResult, prewarm
from controller.samplestore import SampleStore
from controller.sidecar.collector import SidecarCollector
from controller.sidecar.gate import Gate, GatePolicy, WarmPhase
from controller.sidecar.keepwarm import KeepWarm, PassResult
from controller.sidecar.mlock import MlockError, WeightLock, why_not_affordable, why_not_permitted
from controller.sidecar.modes import WarmContext
from controller.sidecar.record import SampleContext, SampleWriter, load_sample, prewarm_sample
from controller.sidecar.settings import SidecarSettings
from controller.sidecar.state import SidecarState
from controller.sidecar.vllm import (
    HealthProbe,
    LoadObservation,
    LogTail,
    ProcessFinder,
    VllmStart,
    VllmWatcher,
    WatcherHooks,
    compile_pattern,
)
from controller.units import format_bytes, format_rate
from exporter.models import ModelSpec
from exporter.residency import ResidencyProbe
from exporter.samples import Sample
from exporter.server import create_app, serve
from exporter.weightset import WeightSet

log = structlog.get_logger("pagewarm")

GATE_TICK_SECONDS = 0.05
# A warm stuck in a syscall (a hung network filesystem) must not hold the exit forever.
SHUTDOWN_WARM_GRACE_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    weight_set: WeightSet
    model: str
    settings: SidecarSettings
    policy: GatePolicy
    options: PrewarmOptions
    reserve_bytes: int
    memory_guard: bool


class Sidecar:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        settings = config.settings
        ws = config.weight_set
        self.state = SidecarState(
            model=config.model,
            model_path=ws.root,
            size_bytes=ws.total_bytes,
            gate=Gate(config.policy, settings.gate_timeout_seconds),
        )
        self.probe = ResidencyProbe(settings.residency_method)
        self.writer = SampleWriter(SampleStore(settings.samples))
        self.cancel = threading.Event()  # the threads' stop signal (warm, keep-warm)
        self.weight_lock = WeightLock()
        self.prewarm_sample: Sample | None = None
        self._claimed_by: int | None = None  # the vLLM start labelled with the warm
        self._context: SampleContext | None = None
        self._stop = asyncio.Event()
        self._gate_opened = asyncio.Event()
        self._keepwarm_note: str | None = None
        self.stuck_threads = False  # a thread that would block the exit (see _shutdown)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pagewarm-warm")

    # Lifecycle ----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        settings = self.config.settings
        setup = await asyncio.to_thread(
            Setup.detect, self.config.weight_set.root, settings.sysfs_root
        )
        self._context = SampleContext(
            model=self.config.model,
            weight_set=self.config.weight_set,
            setup=setup,
            health_url=settings.vllm_health_url,
            gate_policy=str(self.config.policy),
        )
        # No health URL: nothing to time (a keep-warm or metrics-only sidecar).
        watcher = self._watcher() if settings.vllm_health_url else None
        server_stop = asyncio.Event()
        server = asyncio.create_task(self._serve(server_stop), name="server")
        warm = asyncio.create_task(self._warm(), name="warm")
        gate = asyncio.create_task(self._gate_loop(), name="gate")
        watch = asyncio.create_task(
            watcher.run() if watcher is not None else self._until_stopped(), name="vllm"
        )
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait({server, stopped, watch}, return_when=asyncio.FIRST_COMPLETED)
        status = self._exit_status(server, watch)
        await self._shutdown(warm, [gate, watch, stopped])
        if watcher is not None:
            await watcher.close()
        server_stop.set()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await server
        self._executor.shutdown(wait=not self.stuck_threads)
        log.info("sidecar stopped", exit_status=status)
        return status

    async def _until_stopped(self) -> None:
        await self._stop.wait()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal received: stopping", signal=sig.name)
        self._stop.set()

    def _exit_status(self, server: asyncio.Task[None], watch: asyncio.Task[None]) -> int:
        for task, what in ((server, "cannot listen"), (watch, "vLLM watcher failed")):
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                log.error(what, error=str(exc), exc_info=exc)
                return 1
        return 0

    async def _shutdown(self, warm: asyncio.Task[None], others: list[asyncio.Task[Any]]) -> None:
        self._stop.set()
        self.cancel.set()
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        # The warm returns soon after the cancel (it checks between steps) and records its
        # sample; it is only abandoned when stuck in a syscall.
        try:
            await asyncio.wait_for(asyncio.shield(warm), SHUTDOWN_WARM_GRACE_SECONDS)
        except TimeoutError:
            # Its thread cannot be interrupted: the command exits without waiting for it.
            self.stuck_threads = True
            log.error(  # noqa: TRY400 - a timeout has no traceback worth showing
                "pre-warm did not stop in time (stuck in a read?): its sample is skipped"
            )
            warm.cancel()
        await self.writer.drain()
        if self.weight_lock.locked_bytes:
            await asyncio.to_thread(self.weight_lock.unlock)
            self.state.mlock.locked_bytes = 0
            log.info("weights unlocked")

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; True when the sidecar is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    # HTTP ---------------------------------------------------------------------------------

    async def _serve(self, stop: asyncio.Event) -> None:
        settings = self.config.settings
        app = create_app(
            settings,
            [ModelSpec(self.config.weight_set.root, self.config.model)],
            extra_collectors=[SidecarCollector(self.state)],
            extra_routes=[web.get("/startup", self._startup), web.get("/status", self._status)],
        )
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            idle_timeout_seconds=settings.idle_timeout_seconds,
            shutdown=stop,
            handle_signals=False,
        )

    async def _startup(self, request: web.Request) -> web.Response:
        """The startupProbe: 200 once the gate is open, 503 with the reason before."""
        self._check_gate()
        status = 200 if self.state.gate.is_open else 503
        return web.json_response(self.state.startup_document(), status=status)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.status_document())

    # The gate -----------------------------------------------------------------------------

    def _check_gate(self) -> None:
        if not self.state.evaluate_gate():
            return
        self._gate_opened.set()
        decision = self.state.gate.decision
        fields = {
            "reason": decision.reason,
            "policy": str(self.config.policy),
            "after_seconds": round(self.state.gate.opened_after_seconds or 0.0, 3),
            "prewarm_fraction": round(self.state.warm.fraction, 4),
        }
        if decision.timed_out:
            log.warning("gate opened by its timeout", **fields)
        else:
            log.info("gate open", **fields)

    async def _gate_loop(self) -> None:
        while not self.state.gate.is_open:
            self._check_gate()
            if self.state.gate.is_open or await self._sleep_or_stop(GATE_TICK_SECONDS):
                return

    def _gate_opened_at(self) -> tuple[float, float]:
        opened = self.state.gate_opened_monotonic or time.monotonic()
        return opened, time.time() - (time.monotonic() - opened)

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
        if settings.prewarm_enabled:
            await self._prewarm()
        else:
            self.state.warm.phase = WarmPhase.DISABLED
            log.info("pre-warm disabled: the gate opens at once")
        if self._stop.is_set():
            return
        if settings.mlock:
            await self._mlock()
        if settings.keep_warm:
            await self._keep_warm()

    async def _prewarm(self) -> None:
        warm = self.state.warm
        ws = self.config.weight_set
        warm.started_monotonic = time.monotonic()
        progress = warm.progress = PrewarmProgress(planned_bytes=ws.total_bytes)
        before = await asyncio.to_thread(self.probe.measure, ws)
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
            cancel=self.cancel,
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
        if result.file_errors:
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
        self._check_gate()

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
            reason = why_not_permitted(ws.total_bytes) or why_not_affordable(
                ws.total_bytes, residency.cached_bytes, memory
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
            cancel=self.cancel,
        )
        state = self.state.keepwarm
        state.enabled, state.interval_seconds = True, keeper.interval
        log.info(
            "keep-warm on",
            interval_seconds=keeper.interval,
            rate_limit=format_rate(settings.keep_warm_rate_limit_bytes),
        )
        while not await self._sleep_or_stop(keeper.interval):
            result = await asyncio.to_thread(keeper.run_pass)
            if self._stop.is_set():
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

    # vLLM ---------------------------------------------------------------------------------

    def _watcher(self) -> VllmWatcher:
        settings = self.config.settings
        pattern = compile_pattern(settings.vllm_process_pattern)
        return VllmWatcher(
            health=HealthProbe(settings.vllm_health_url),
            finder=ProcessFinder(pattern) if pattern is not None else None,
            log_tail=LogTail(settings.vllm_log) if settings.vllm_log else None,
            state=self.state.vllm,
            hooks=WatcherHooks(
                self._measure_ratio,
                self._vllm_started,
                self._vllm_finished,
                self._vllm_already_serving,
            ),
            gate_opened=self._gate_opened,
            gate_opened_at=self._gate_opened_at,
            load_timeout_seconds=settings.load_timeout_seconds,
            poll_interval_seconds=settings.health_poll_interval_seconds,
        )

    async def _measure_ratio(self) -> float | None:
        residency = await asyncio.to_thread(self.probe.measure, self.config.weight_set)
        return residency.ratio

    def _vllm_started(self, start: VllmStart) -> None:
        """The first start after the warm began is the one the warm was for."""
        warm = self.state.warm
        if (
            not warm.claimed
            and warm.started_monotonic is not None
            and warm.started_monotonic <= start.started_monotonic
        ):
            warm.claimed = True
            self._claimed_by = start.index

    def _vllm_already_serving(self) -> None:
        """The warm ran for a vLLM that was already serving (this sidecar was restarted):
        the next start finds the weights as that vLLM's life left them, not as the warm
        did."""
        self.state.warm.claimed = True

    async def _vllm_finished(self, observation: LoadObservation) -> None:
        assert self._context is not None
        warm = self.state.warm
        warm_context: WarmContext | None = None
        prewarm: Sample | None = None
        if self._claimed_by == observation.start.index:
            finished = warm.finished_monotonic
            complete = (
                warm.phase is WarmPhase.DONE
                and finished is not None
                and finished <= observation.ended_monotonic
            )
            warm_context = WarmContext(warm.ratio_before, complete)
            prewarm = self.prewarm_sample
        sample = load_sample(
            self._context,
            observation,
            ratio_after=await self._measure_ratio(),
            warm=warm_context,
            prewarm=prewarm,
            gate_timed_out=self.state.gate.decision.timed_out,
        )
        recorded = await self.writer.append(sample)
        self.state.vllm.last_sample = {
            "id": sample.id,
            "mode": str(sample.mode),
            "seconds": round(sample.seconds, 3),
            "outcome": str(sample.outcome),
            "error": sample.error,
            "recorded": recorded,
        }
        fields = {
            "mode": str(sample.mode),
            "seconds": round(sample.seconds, 3),
            "outcome": str(sample.outcome),
            "origin": str(observation.start.origin),
            "resident_ratio_at_start": observation.start.ratio_at_start,
            "weights_seconds": observation.log.weight_loading_seconds,
        }
        if sample.error:
            log.warning("vLLM load recorded", error=sample.error, **fields)
        else:
            log.info("vLLM load recorded", **fields)
