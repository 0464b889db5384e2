"""One keep-warm pass over the node's models, and the state kept between passes.

A pass (blocking: the event loop runs it in a thread):

1. the config (one stat unless it changed) and the model scan (the exporter's scanner: a
   weight set is listed again only when its directories changed);
2. residency of every file (the exporter's cachestat pass: one syscall a file);
3. the warm map: warm with hysteresis, evictions since the last pass, thrashing; published
   (metrics, /status, the NFD file) before anything is read, so an eviction shows at once;
4. re-reading what is missing, with the pre-warm engine (only missing chunks, parallel,
   rate-limited by one node-wide limiter), highest priority first, then load order, within
   one memory budget for the pass: when it is spent the pass stops, so a lower priority is
   left partial before a higher one could lose pages to it. It does not re-read while
   memory pressure (PSI) is above the threshold or held off after it, nor a thrashing model;
   each back-off is counted by reason. A pass re-reads for one interval at most: the map is
   refreshed at least once an interval;
5. the map again, with what was brought back.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from controller.memguard import MemoryGuard
from controller.node.config import ConfigFile, ModelsDirectory, NodeConfig
from controller.node.features import FeatureFile
from controller.node.room import make_room
from controller.node.settings import NodeSettings
from controller.node.state import BackoffReason, ModelWarmth, NodeMap, feature_lines
from controller.prewarm import READ_STEP_BYTES, PrewarmOptions, PrewarmProgress, prewarm
from controller.ratelimit import RateLimiter
from controller.units import MiB
from exporter.linux.psi import memory_pressure_file, read_some
from exporter.models import ModelScanner, WatchedModel
from exporter.residency import ModelResidency, ResidencyProbe, measure_scan

log = structlog.get_logger("pagewarm")

# Less than this lost since the last pass is not an eviction (metadata pages come and go).
EVICTION_MIN_BYTES = 1 * MiB
# While re-reading, PSI is read again at most this often.
PRESSURE_RECHECK_SECONDS = 0.1
# The stalled share is taken over at least this long (shorter windows are noise).
PSI_SAMPLE_SECONDS = 0.25


@dataclass(slots=True)
class _Track:
    """What the agent remembers of one model between passes."""

    warm: bool = False
    expected_bytes: int | None = None  # resident after the last pass
    evictions: deque[float] = field(default_factory=deque)
    rewarm_bytes_total: int = 0


@dataclass(slots=True)
class _PassOutcome:
    rewarmed: int = 0
    stopped_by: str | None = None
    budget_bytes: int | None = None


class NodeAgent:
    def __init__(
        self,
        settings: NodeSettings,
        source: ConfigFile | ModelsDirectory,
        *,
        probe: ResidencyProbe | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.probe = probe or ResidencyProbe(settings.residency_method)
        self.cancel = cancel or threading.Event()
        self.scanner = ModelScanner(
            source.sources(),
            settings.weight_patterns,
            settings.metadata_patterns,
            cross_filesystems=settings.cross_filesystems,
        )
        self.limiter = RateLimiter(settings.node_rate_limit)
        self.options = PrewarmOptions(
            strategy=settings.prewarm_strategy,
            threads=settings.prewarm_threads,
            chunk_bytes=settings.prewarm_chunk_bytes,
            rate_limit_bytes_per_second=settings.node_rate_limit,
        )
        self.pressure_path: Path | None = memory_pressure_file()
        dir_ = settings.nfd_features_dir
        self.features = FeatureFile(dir_) if dir_ is not None else None
        self.backoffs = {reason.value: 0 for reason in BackoffReason}
        self.hold_until = 0.0
        self.passes = 0
        self._tracks: dict[str, _Track] = {}
        self._lock = threading.Lock()  # one pass at a time
        self._budget_bytes: int | None = None  # of the last pass that looked
        self._last_stopped_by: str | None = None
        self._psi_sample: tuple[int, float] = (0, 0.0)  # (total us, time.monotonic())
        self._psi_share = 0.0
        self.map = self._snapshot((), _PassOutcome())

    # -- the pass ------------------------------------------------------------------------

    def run_pass(self) -> NodeMap:
        with self._lock:
            started, cpu_started = time.monotonic(), time.thread_time()
            config = self.source.current()
            self.scanner.sources = self.source.sources()
            scan = self.scanner.scan()
            measured = measure_scan(self.probe, scan)
            residency = {m.name: r for m, r in measured.models}
            models = scan.models
            self._forget_others({m.name for m in models})
            now = time.monotonic()
            for model in models:
                self._observe(model.name, residency.get(model.name), now)
            first = self._publish(models, residency, config, _PassOutcome())
            measured_before = dict(residency)
            outcome = self._rewarm(models, residency, config, started)
            self._last_stopped_by = outcome.stopped_by
            # Nothing re-read or dropped (the pass of an idle node): the warmth just
            # published stands (settling the same figures again changes nothing).
            unchanged = all(residency[n] is r for n, r in measured_before.items())
            if not unchanged:
                for model in models:
                    self._settle(model.name, residency.get(model.name))
            self.passes += 1
            return self._publish(
                models,
                residency,
                config,
                outcome,
                seconds=time.monotonic() - started,
                cpu_seconds=time.thread_time() - cpu_started,
                warmth=first.models if unchanged else None,
            )

    def _forget_others(self, names: set[str]) -> None:
        for name in [n for n in self._tracks if n not in names]:
            del self._tracks[name]

    def _observe(self, name: str, found: ModelResidency | None, now: float) -> None:
        """Evictions since the last pass, the window's count, warm with hysteresis."""
        track = self._tracks.setdefault(name, _Track())
        cached = found.cached_bytes if found is not None else None
        if (
            cached is not None
            and track.expected_bytes is not None
            and cached < track.expected_bytes - EVICTION_MIN_BYTES
        ):
            track.evictions.append(now)
        window = self.settings.node_thrash_window
        while track.evictions and track.evictions[0] < now - window:
            track.evictions.popleft()
        self._settle(name, found)

    def _settle(self, name: str, found: ModelResidency | None) -> None:
        track = self._tracks[name]
        ratio = found.ratio if found is not None else None
        track.expected_bytes = found.cached_bytes if found is not None else None
        threshold = self.settings.node_warm_threshold
        if ratio is None:
            track.warm = False
        elif track.warm:
            track.warm = ratio >= threshold - self.settings.node_warm_hysteresis
        else:
            track.warm = ratio >= threshold

    def thrashing(self, name: str) -> bool:
        track = self._tracks.get(name)
        return track is not None and len(track.evictions) > self.settings.node_thrash_evictions

    # -- re-reading ----------------------------------------------------------------------

    def _rewarm(
        self,
        models: tuple[WatchedModel, ...],
        residency: dict[str, ModelResidency],
        config: NodeConfig,
        started: float,
    ) -> _PassOutcome:
        outcome = _PassOutcome()
        guard = MemoryGuard(self.settings.node_reserve, enabled=self.settings.prewarm_memory_guard)
        outcome.budget_bytes = self._budget_bytes = guard.budget_bytes
        order = sorted(
            (m for m in models if m.name in residency),
            key=lambda m: -config.priority_of(m.name),  # stable: load order within a priority
        )
        missing = [m for m in order if _missing(residency[m.name]) > 0]
        if not missing:
            return outcome
        if self._under_pressure():
            self._back_off(outcome, BackoffReason.MEMORY_PRESSURE)
            return outcome
        stop = _Stopper(self, started + self.settings.node_interval)
        for model in missing:
            if self.thrashing(model.name):
                # Re-reading a lower priority now would take memory that this one lacks.
                self._back_off(outcome, BackoffReason.THRASHING, model.name)
                break
            guard = self._room_for(model, order, residency, config, guard)
            if guard.budget_bytes is not None and guard.budget_bytes <= guard.granted_bytes:
                self._back_off(outcome, BackoffReason.BUDGET, "no memory budget left")
                break
            weight_set = model.weight_set
            assert weight_set is not None  # measured models have one
            try:
                result = prewarm(
                    weight_set,
                    self.options,
                    probe=self.probe,
                    guard=guard,
                    on_progress=stop.check,
                    cancel=stop.event,
                    limiter=self.limiter,
                )
            except Exception as exc:  # one model's failure must not stop the others
                log.warning("re-warm failed", model=model.name, error=str(exc), exc_info=exc)
                continue
            residency[model.name] = result.after
            self._tracks[model.name].rewarm_bytes_total += result.read_bytes
            outcome.rewarmed += result.read_bytes
            if stop.pressure:
                self.hold_until = time.monotonic() + self.settings.node_pressure_hold_off
                self._back_off(outcome, BackoffReason.MEMORY_PRESSURE)
                break
            if guard.refused_reason is not None:
                self._back_off(outcome, BackoffReason.BUDGET, guard.refused_reason)
                break
            if stop.event.is_set():
                outcome.stopped_by = "cancelled" if self.cancel.is_set() else "interval"
                break
        return outcome

    def _room_for(
        self,
        model: WatchedModel,
        order: list[WatchedModel],
        residency: dict[str, ModelResidency],
        config: NodeConfig,
        guard: MemoryGuard,
    ) -> MemoryGuard:
        """The guard to re-read ``model`` with: when the budget left cannot hold what it
        misses, lower priorities' pages are dropped first and the budget taken again."""
        budget = guard.budget_bytes
        # The re-read's buffers (read strategy) come out of the same budget first.
        buffers = self.options.threads * READ_STEP_BYTES
        shortfall = _missing(residency[model.name]) + buffers - (budget or 0) + guard.granted_bytes
        if budget is None or shortfall <= 0:
            return guard
        priority = config.priority_of(model.name)
        lower = [m for m in reversed(order) if config.priority_of(m.name) < priority]
        freed = make_room(shortfall, [residency[m.name] for m in lower], self.probe)
        if not freed:
            return guard
        for other in lower:
            residency[other.name] = self.probe.measure(residency[other.name].weight_set)
        log.info("dropped lower priorities for a higher one", model=model.name, freed_bytes=freed)
        return MemoryGuard(self.settings.node_reserve, enabled=True)

    def _back_off(self, outcome: _PassOutcome, reason: BackoffReason, detail: str = "") -> None:
        self.backoffs[reason.value] += 1
        outcome.stopped_by = outcome.stopped_by or reason.value
        # Once when a back-off starts (or changes reason), not on every pass it lasts.
        report = log.debug if reason.value == self._last_stopped_by else log.info
        report("keep-warm backed off", reason=reason.value, detail=detail or None)

    def pressure(self) -> float | None:
        """PSI memory ``some``, percent: avg10, or the stalled share of the time since the
        last sample (from the cumulative total) when higher, so that a burst counts at once
        rather than after avg10's smoothing (a few ms of reclaim in ten seconds rounds to
        0.00 there)."""
        if self.pressure_path is None:
            return None
        try:
            avg10, total = read_some(self.pressure_path)
        except (OSError, ValueError, KeyError):
            return None
        now = time.monotonic()
        last_total, last_time = self._psi_sample
        if now - last_time >= PSI_SAMPLE_SECONDS:
            if last_time > 0:
                self._psi_share = 100 * (total - last_total) / 1e6 / (now - last_time)
            self._psi_sample = (total, now)
        return max(avg10, self._psi_share)

    def _under_pressure(self) -> bool:
        """Above the threshold now (which starts or extends a hold-off), or held off."""
        now = time.monotonic()
        value = self.pressure()
        if value is not None and value > self.settings.node_pressure_threshold:
            self.hold_until = now + self.settings.node_pressure_hold_off
            return True
        return now < self.hold_until

    # -- the map -------------------------------------------------------------------------

    def _publish(
        self,
        models: tuple[WatchedModel, ...],
        residency: dict[str, ModelResidency],
        config: NodeConfig,
        outcome: _PassOutcome,
        *,
        seconds: float | None = None,
        cpu_seconds: float | None = None,
        warmth: tuple[ModelWarmth, ...] | None = None,
    ) -> NodeMap:
        """The map of ``residency``; ``warmth``: the models' warmth as already published
        this pass (the feature file has its lines)."""
        if warmth is None:
            warmth = tuple(self._warmth(m, residency.get(m.name), config) for m in models)
            if self.features is not None:
                self.features.update(feature_lines(warmth))
        self.map = self._snapshot(
            warmth, outcome, seconds=seconds, cpu_seconds=cpu_seconds, pressure=self.pressure()
        )
        return self.map

    def _warmth(
        self, model: WatchedModel, found: ModelResidency | None, config: NodeConfig
    ) -> ModelWarmth:
        track = self._tracks.get(model.name) or _Track()
        error = model.error
        if found is not None and not found.trusted:
            error = "; ".join(found.unknown_reasons) or "residency unknown"
        return ModelWarmth(
            name=model.name,
            path=str(model.path),
            priority=config.priority_of(model.name),
            size_bytes=found.size_bytes if found is not None else 0,
            resident_bytes=found.cached_bytes if found is not None else None,
            warm=track.warm,
            thrashing=self.thrashing(model.name),
            evictions_in_window=len(track.evictions),
            rewarm_bytes_total=track.rewarm_bytes_total,
            error=error,
        )

    def _snapshot(
        self,
        warmth: tuple[ModelWarmth, ...],
        outcome: _PassOutcome,
        *,
        seconds: float | None = None,
        cpu_seconds: float | None = None,
        pressure: float | None = None,
    ) -> NodeMap:
        features = self.features
        return NodeMap(
            node=self.settings.node_name,
            models=warmth,
            config=self.source.status(),
            backoffs=dict(self.backoffs),
            budget_bytes=self._budget_bytes,
            memory_pressure=pressure,
            pressure_source=str(self.pressure_path) if self.pressure_path else None,
            hold_off_seconds_left=max(0.0, self.hold_until - time.monotonic()),
            passes=self.passes,
            last_pass_seconds=seconds,
            last_pass_cpu_seconds=cpu_seconds,
            last_rewarm_bytes=outcome.rewarmed,
            stopped_by=outcome.stopped_by,
            features_file=str(features.path) if features is not None else None,
            features_error=features.error if features is not None else None,
            warm_threshold=self.settings.node_warm_threshold,
        )


def _missing(found: ModelResidency) -> int:
    """Bytes to re-read; 0 when unknown (an untrusted figure is never acted on)."""
    return 0 if found.cached_bytes is None else max(0, found.size_bytes - found.cached_bytes)


class _Stopper:
    """Stops a pass's re-reading: at its deadline, on memory pressure, on shutdown."""

    def __init__(self, agent: NodeAgent, deadline: float) -> None:
        self.agent = agent
        self.deadline = deadline
        self.event = threading.Event()
        self.pressure = False
        self._next_check = 0.0

    def check(self, _progress: PrewarmProgress) -> None:
        now = time.monotonic()
        if self.agent.cancel.is_set() or now >= self.deadline:
            self.event.set()
        if now < self._next_check:
            return
        self._next_check = now + PRESSURE_RECHECK_SECONDS
        value = self.agent.pressure()
        if value is not None and value > self.agent.settings.node_pressure_threshold:
            self.pressure = True
            self.event.set()
