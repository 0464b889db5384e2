"""The sidecar's live state: the warm, the gate, vLLM, keep-warm and mlock.

Written by the event loop (and the warm's own progress counters by its threads), read by
the HTTP handlers and the metrics collector (on the collection thread): plain attributes,
each read on its own, so a reader sees every field at a recent value, never a torn one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from controller.prewarm import PrewarmProgress, PrewarmResult
from controller.profile.replay import ReplayProgress, ReplayResult
from controller.sidecar.gate import Gate, GatePolicy, WarmPhase, WarmView


@dataclass(slots=True)
class WarmState:
    phase: WarmPhase = WarmPhase.PENDING
    progress: PrewarmProgress | None = None
    result: PrewarmResult | None = None
    detail: str | None = None  # why it was partial or failed
    ratio_before: float | None = None  # residency when it started (None: unknown)
    started_monotonic: float | None = None
    finished_monotonic: float | None = None
    sample_id: str | None = None  # its kind=prewarm sample
    claimed: bool = False  # a vLLM start has been labelled with this warm

    @property
    def fraction(self) -> float:
        if self.phase is WarmPhase.DONE:
            return 1.0
        return self.progress.fraction if self.progress is not None else 0.0

    def view(self) -> WarmView:
        progress = self.progress
        return WarmView(
            phase=self.phase,
            fraction=self.fraction,
            done_bytes=progress.done_bytes if progress else 0,
            planned_bytes=progress.planned_bytes if progress else 0,
            detail=self.detail,
        )

    def document(self) -> dict[str, Any]:
        progress = self.progress
        doc: dict[str, Any] = {
            "phase": str(self.phase),
            "fraction": round(self.fraction, 4),
            "planned_bytes": progress.planned_bytes if progress else None,
            "done_bytes": progress.done_bytes if progress else None,
            "read_bytes": progress.read_bytes if progress else None,
            "files_done": progress.files_done if progress else None,
            "files_total": progress.files_total if progress else None,
            "resident_ratio_before": self.ratio_before,
            "detail": self.detail,
            "sample_id": self.sample_id,
        }
        if self.started_monotonic is not None:
            end = self.finished_monotonic or time.monotonic()
            doc["seconds"] = round(end - self.started_monotonic, 3)
        if self.result is not None:
            doc["result"] = self.result.to_dict()
        return doc


class VllmPhase(StrEnum):
    WAITING = "waiting"  # for vLLM to start
    LOADING = "loading"  # started, /health not 200 yet
    READY = "ready"
    NOT_READY = "not_ready"  # past the load timeout, still not answering 200
    EXITED = "exited"


@dataclass(slots=True)
class VllmState:
    phase: VllmPhase = VllmPhase.WAITING
    starts: int = 0  # every start seen (timed or not)
    timed_starts: int = 0
    untimed_starts: int = 0  # restarts seen only through /health (no process view)
    pid: int | None = None
    timing_origin: str | None = None
    load_started_monotonic: float | None = None
    process_view: bool | None = None  # None: not known yet
    last_sample: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "phase": str(self.phase),
            "starts": self.starts,
            "timed_starts": self.timed_starts,
            "untimed_starts": self.untimed_starts,
            "pid": self.pid,
            "timing_origin": self.timing_origin,
            "process_view": self.process_view,
            "last_sample": self.last_sample,
        }
        if self.phase is VllmPhase.LOADING and self.load_started_monotonic is not None:
            doc["loading_seconds"] = round(time.monotonic() - self.load_started_monotonic, 3)
        return doc


@dataclass(slots=True)
class KeepWarmState:
    enabled: bool = False
    passes: int = 0
    rewarm_bytes_total: int = 0
    last_missing_bytes: int | None = None
    interval_seconds: float | None = None
    thrashing: bool = False
    last_note: str | None = None  # budget stop, thrash, unreadable file

    def document(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "passes": self.passes,
            "rewarm_bytes_total": self.rewarm_bytes_total,
            "last_missing_bytes": self.last_missing_bytes,
            "interval_seconds": self.interval_seconds,
            "thrashing": self.thrashing,
            "last_note": self.last_note,
        }


@dataclass(slots=True)
class MlockState:
    requested: bool = False
    locked_bytes: int = 0
    error: str | None = None  # why the weights are not locked

    def document(self) -> dict[str, Any]:
        return {"requested": self.requested, "locked_bytes": self.locked_bytes, "error": self.error}


class ProfilePhase(StrEnum):
    OFF = "off"  # no --startup-profile
    WAITING = "waiting"  # for vLLM's process: its files are opened through its root
    REPLAYING = "replaying"
    REPLAYED = "replayed"
    RECORDING = "recording"  # none existed: this start is being recorded
    RECORDED = "recorded"
    UNAVAILABLE = "unavailable"  # none, and none recorded (see detail)
    FAILED = "failed"


@dataclass(slots=True)
class StartupProfileState:
    phase: ProfilePhase = ProfilePhase.OFF
    path: str | None = None
    key: str | None = None  # engine and model
    detail: str | None = None
    progress: ReplayProgress | None = None
    result: ReplayResult | None = None
    recorded_entries: int | None = None
    recorded_bytes: int | None = None
    # Weights read at the replay's small I/O depth while vLLM imported (libraries cold).
    weights_read_bytes: int | None = None

    def sample_fields(self) -> dict[str, Any]:
        """What a load sample says about the profile (nothing without one)."""
        if self.phase is ProfilePhase.OFF:
            return {}
        result = self.result
        return {
            "startup_profile": self.key,
            "startup_profile_phase": str(self.phase),
            "startup_profile_read_bytes": result.read_bytes if result else None,
            "startup_profile_stale_entries": result.stale_entries if result else None,
            "startup_profile_missing_entries": result.missing_entries if result else None,
            "startup_profile_seconds": round(result.seconds, 3) if result else None,
            "startup_profile_weights_bytes": self.weights_read_bytes,
        }

    def document(self) -> dict[str, Any]:
        progress = self.progress
        return {
            "phase": str(self.phase),
            "path": self.path,
            "key": self.key,
            "detail": self.detail,
            "planned_bytes": progress.planned_bytes if progress else None,
            "done_bytes": progress.done_bytes if progress else None,
            "read_bytes": progress.read_bytes if progress else None,
            "result": self.result.to_dict() if self.result else None,
            "recorded_entries": self.recorded_entries,
            "recorded_bytes": self.recorded_bytes,
            "weights_read_bytes": self.weights_read_bytes,
        }


@dataclass(slots=True)
class SidecarState:
    model: str
    model_path: Path
    size_bytes: int
    gate: Gate
    warm: WarmState = field(default_factory=WarmState)
    vllm: VllmState = field(default_factory=VllmState)
    keepwarm: KeepWarmState = field(default_factory=KeepWarmState)
    mlock: MlockState = field(default_factory=MlockState)
    startup: StartupProfileState = field(default_factory=StartupProfileState)
    started_monotonic: float = field(default_factory=time.monotonic)
    gate_opened_monotonic: float | None = None

    @property
    def policy(self) -> GatePolicy:
        return self.gate.policy

    def elapsed(self) -> float:
        return time.monotonic() - self.started_monotonic

    def evaluate_gate(self) -> bool:
        """Re-evaluate the gate; True when it opened just now."""
        opened = self.gate.evaluate(self.warm.view(), self.elapsed())
        if opened:
            self.gate_opened_monotonic = time.monotonic()
        return opened

    def gate_document(self) -> dict[str, Any]:
        decision = self.gate.decision
        return {
            "open": decision.open,
            "reason": decision.reason,
            "policy": str(self.policy),
            "timed_out": decision.timed_out,
            "timeout_seconds": self.gate.timeout_seconds,
            "opened_after_seconds": (
                None
                if self.gate.opened_after_seconds is None
                else round(self.gate.opened_after_seconds, 3)
            ),
        }

    def startup_document(self) -> dict[str, Any]:
        return {
            "gate": self.gate_document(),
            "prewarm": {
                "phase": str(self.warm.phase),
                "fraction": round(self.warm.fraction, 4),
            },
        }

    def status_document(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_path": str(self.model_path),
            "size_bytes": self.size_bytes,
            "uptime_seconds": round(self.elapsed(), 3),
            "gate": self.gate_document(),
            "prewarm": self.warm.document(),
            "vllm": self.vllm.document(),
            "keep_warm": self.keepwarm.document(),
            "mlock": self.mlock.document(),
            "startup_profile": self.startup.document(),
        }
