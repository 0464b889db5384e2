"""The sidecar process: one event loop that serves and coordinates.

Tasks:
- the HTTP server (the exporter's app: /metrics with the exporter's collectors for this model
  plus the sidecar's, /healthz, and /startup, /status);
- the warm (``controller.sidecar.warmer``): the pre-warm and its kind=prewarm sample, then
  mlock and keep-warm when asked for;
- the gate: re-evaluated every few tens of milliseconds (and on every /startup) until open;
- the vLLM watcher: one load sample per vLLM start.

SIGTERM or SIGINT: the warm and keep-warm are cancelled, the watcher stops (a load still in
progress is not recorded: its outcome is unknown), appends in flight finish, the weights
are unlocked, the server closes, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from controller.samplestore import SampleStore
from controller.sampling import SIDECAR_SOURCE, SampleHeader, Setup
from controller.sidecar.collector import SidecarCollector
from controller.sidecar.gate import Gate, WarmPhase
from controller.sidecar.modes import WarmContext, started_after_warm
from controller.sidecar.record import SampleContext, SampleWriter, load_sample
from controller.sidecar.settings import SidecarConfig
from controller.sidecar.state import SidecarState
from controller.sidecar.vllm import (
    HealthProbe,
    LoadObservation,
    VllmStart,
    VllmWatcher,
    WatcherHooks,
    compile_pattern,
)
from controller.sidecar.vllm_log import LogTail
from controller.sidecar.warmer import Warmer, sleep_or_stop
from exporter.linux.proc import ProcessFinder
from exporter.models import ModelSpec
from exporter.residency import ResidencyProbe
from exporter.samples import Outcome, Sample
from exporter.server import create_app, serve

log = structlog.get_logger("pagewarm")

GATE_TICK_SECONDS = 0.05


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
        self._stop = asyncio.Event()
        self.warmer = Warmer(
            config,
            state=self.state,
            probe=self.probe,
            writer=self.writer,
            stop=self._stop,
            on_warm_finished=self._check_gate,
        )
        self._claimed_by: int | None = None  # the vLLM start labelled with the warm
        self._context: SampleContext | None = None
        self._gate_opened = asyncio.Event()

    @property
    def stuck_threads(self) -> bool:
        """A thread that would block the exit (the warm, stuck in a syscall)."""
        return self.warmer.stuck

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
            SampleHeader(
                source=SIDECAR_SOURCE,
                model=self.config.model,
                weight_set=self.config.weight_set,
                setup=setup,
            ),
            health_url=settings.vllm_health_url,
            gate_policy=str(self.config.policy),
        )
        # Before vLLM can be seen: whether its start is replayed or recorded.
        await asyncio.to_thread(self.warmer.profiler.load)
        # The port before the warm: a busy one fails here, before anything is warmed or
        # recorded (a crash loop must not write a bogus pre-warm sample at every restart).
        # The warm starts the moment the port is bound, before any probe can be answered.
        context = self._context
        server_stop = asyncio.Event()
        server = await self._listen(server_stop, lambda: self.warmer.start(context))
        if server is None:
            await self.warmer.close_profiler()
            self.warmer.close()
            return 1
        # No health URL: nothing to time (a keep-warm or metrics-only sidecar).
        watcher = self._watcher() if settings.vllm_health_url else None
        gate = asyncio.create_task(self._gate_loop(), name="gate")
        watch = asyncio.create_task(
            watcher.run() if watcher is not None else self._until_stopped(), name="vllm"
        )
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait({server, stopped, watch}, return_when=asyncio.FIRST_COMPLETED)
        status = self._exit_status(server, watch)
        await self._shutdown([gate, watch, stopped])
        if watcher is not None:
            await watcher.close()
        server_stop.set()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await server
        self.warmer.close()
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

    async def _shutdown(self, others: list[asyncio.Task[Any]]) -> None:
        self._stop.set()
        self.warmer.cancel()
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self.warmer.stop()  # its sample recorded, unless stuck in a syscall
        await self.warmer.close_profiler()
        await self.writer.drain()
        await self.warmer.unlock()

    # HTTP ---------------------------------------------------------------------------------

    async def _listen(
        self, stop: asyncio.Event, on_listening: Callable[[], None]
    ) -> asyncio.Task[None] | None:
        """The server's task once it listens (``on_listening`` called in the same step);
        None (and why, logged) when it cannot."""
        listening = asyncio.Event()

        def bound_now() -> None:
            listening.set()
            on_listening()

        server = asyncio.create_task(self._serve(stop, bound_now), name="server")
        bound = asyncio.create_task(listening.wait())
        await asyncio.wait({server, bound}, return_when=asyncio.FIRST_COMPLETED)
        if listening.is_set():
            return server
        bound.cancel()
        error = server.exception() if not server.cancelled() else None
        settings = self.config.settings
        log.error("cannot listen", host=settings.host, port=settings.port, error=str(error))
        return None

    async def _serve(self, stop: asyncio.Event, on_listening: Callable[[], None]) -> None:
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
            on_listening=lambda _addresses: on_listening(),
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
            if self.state.gate.is_open or await sleep_or_stop(self._stop, GATE_TICK_SECONDS):
                return

    def _gate_opened_at(self) -> tuple[float, float]:
        opened = self.state.gate_opened_monotonic or time.monotonic()
        return opened, time.time() - (time.monotonic() - opened)

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
        self.warmer.profiler.engine_started(start.process)
        warm = self.state.warm
        if (
            not warm.claimed
            and warm.started_monotonic is not None
            and started_after_warm(warm.started_monotonic, start.started_monotonic)
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
            prewarm = self.warmer.prewarm_sample
            self.warmer.profiler.engine_finished(ready=observation.outcome is Outcome.OK)
        sample = load_sample(
            self._context,
            observation,
            ratio_after=await self._measure_ratio(),
            warm=warm_context,
            prewarm=prewarm,
            gate_timed_out=self.state.gate.decision.timed_out,
            startup=self.state.startup.sample_fields() if warm_context is not None else {},
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
