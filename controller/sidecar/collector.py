"""Collector ``sidecar``: the sidecar's own metrics, served beside the exporter's (same
registry, same port), built fresh from the live state on every collection.

The contract's series (no model label: one sidecar serves one model, the pod's labels
tell them apart): ``pagewarm_sidecar_gate_open``, ``pagewarm_sidecar_gate_info{policy}``,
``pagewarm_sidecar_prewarm_progress_ratio``, ``pagewarm_sidecar_prewarm_read_bytes``,
``pagewarm_sidecar_rewarm_bytes_total``, ``pagewarm_sidecar_vllm_starts_total``; and a few
more that explain them (gate timed out, when it opened, vLLM ready, keep-warm thrash,
locked bytes); with a start-up profile, ``pagewarm_sidecar_startup_profile_info{profile,
phase}``, ``..._read_bytes`` and ``..._entries{state}`` (replayed, stale, missing, failed).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from controller.sidecar.state import ProfilePhase, SidecarState, VllmPhase
from exporter.collectors.base import counter, gauge


class SidecarCollector:
    name = "sidecar"

    def __init__(self, state: SidecarState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._gate()
        yield from self._prewarm()
        yield from self._vllm()
        yield from self._keepwarm()
        yield from self._startup_profile()

    def _gate(self) -> Iterator[Metric]:
        state = self.state
        gate_open = gauge(
            "pagewarm_sidecar_gate_open",
            "1 once the startup gate is open (vLLM may start), 0 before.",
        )
        gate_open.add_metric([], 1.0 if state.gate.is_open else 0.0)
        info = gauge("pagewarm_sidecar_gate_info", "The gate policy (value 1).", ["policy"])
        info.add_metric([str(state.policy)], 1.0)
        timed_out = gauge(
            "pagewarm_sidecar_gate_timed_out",
            "1 when the gate opened because its timeout passed, not because of the warm.",
        )
        timed_out.add_metric([], 1.0 if state.gate.decision.timed_out else 0.0)
        yield from (gate_open, info, timed_out)
        if state.gate.opened_after_seconds is not None:
            opened = gauge(
                "pagewarm_sidecar_gate_opened_after_seconds",
                "Seconds from the sidecar's start until the gate opened.",
            )
            opened.add_metric([], state.gate.opened_after_seconds)
            yield opened

    def _prewarm(self) -> Iterator[Metric]:
        warm = self.state.warm
        ratio = gauge(
            "pagewarm_sidecar_prewarm_progress_ratio",
            "Fraction 0..1 of the weight set the pre-warm has covered (resident or read).",
        )
        ratio.add_metric([], warm.fraction)
        read = gauge(
            "pagewarm_sidecar_prewarm_read_bytes",
            "Bytes the pre-warm has brought into the page cache so far.",
        )
        read.add_metric([], float(warm.progress.read_bytes) if warm.progress else 0.0)
        yield from (ratio, read)

    def _vllm(self) -> Iterator[Metric]:
        vllm = self.state.vllm
        starts = counter(
            "pagewarm_sidecar_vllm_starts",
            "vLLM starts seen by this sidecar (each one timed, unless its process is not "
            "visible: see vllm_untimed_starts).",
        )
        starts.add_metric([], vllm.starts)
        untimed = counter(
            "pagewarm_sidecar_vllm_untimed_starts",
            "vLLM restarts seen only through /health (no shared process namespace): not timed.",
        )
        untimed.add_metric([], vllm.untimed_starts)
        ready = gauge("pagewarm_sidecar_vllm_ready", "1 while vLLM's /health answers 200.")
        ready.add_metric([], 1.0 if vllm.phase is VllmPhase.READY else 0.0)
        yield from (starts, untimed, ready)

    def _keepwarm(self) -> Iterator[Metric]:
        keepwarm = self.state.keepwarm
        rewarm = counter(
            "pagewarm_sidecar_rewarm_bytes",
            "Bytes of evicted weights that keep-warm read back into the page cache.",
        )
        rewarm.add_metric([], keepwarm.rewarm_bytes_total)
        thrashing = gauge(
            "pagewarm_sidecar_keepwarm_thrashing",
            "1 while what keep-warm brings back is evicted again at once (memory pressure).",
        )
        thrashing.add_metric([], 1.0 if keepwarm.thrashing else 0.0)
        locked = gauge(
            "pagewarm_sidecar_mlocked_bytes", "Bytes of the weights locked in memory (mlock)."
        )
        locked.add_metric([], self.state.mlock.locked_bytes)
        yield from (rewarm, thrashing, locked)

    def _startup_profile(self) -> Iterator[Metric]:
        startup = self.state.startup
        if startup.phase is ProfilePhase.OFF:
            return
        info = gauge(
            "pagewarm_sidecar_startup_profile_info",
            "The start-up profile (engine and model) and what became of it (value 1).",
            ["profile", "phase"],
        )
        info.add_metric([startup.key or "", str(startup.phase)], 1.0)
        read = gauge(
            "pagewarm_sidecar_startup_profile_read_bytes",
            "Bytes the start-up profile's replay has brought into the page cache so far.",
        )
        read.add_metric([], float(startup.progress.read_bytes) if startup.progress else 0.0)
        entries = gauge(
            "pagewarm_sidecar_startup_profile_entries",
            "Files of the replayed start-up profile, by what the replay did with them.",
            ["state"],
        )
        result = startup.result
        counts = {
            "replayed": result.replayed_entries if result else 0,
            "stale": result.stale_entries if result else 0,
            "missing": result.missing_entries if result else 0,
            "failed": result.failed_entries if result else 0,
        }
        for state, count in counts.items():
            entries.add_metric([state], float(count))
        yield from (info, read, entries)
