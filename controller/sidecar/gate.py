"""The gate: when the sidecar's startupProbe passes, and with it vLLM's start.

Policies:
- ``full``: once the pre-warm has finished: the weights are resident, or the memory budget
  stopped it (what fits is resident, the rest would only evict itself);
- ``ratio:X``: once the warm has covered the fraction X of the weight set (in load order,
  resident or read), or finished;
- ``none``: at once; the warm overlaps vLLM's imports and CUDA initialisation.

Whatever the policy, the gate opens when the warm ended without completing (it failed, or
was disabled) and when the gate timeout has passed, and it says why: a slow disk or a broken
file must never keep the pod from starting. Once open, it stays open.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controller.units import format_bytes


class GateKind(StrEnum):
    FULL = "full"
    RATIO = "ratio"
    NONE = "none"


GATE_EXAMPLES = "full, none, ratio:0.8"


@dataclass(frozen=True, slots=True)
class GatePolicy:
    kind: GateKind
    ratio: float = 1.0  # the fraction that opens a ratio gate

    @classmethod
    def parse(cls, text: str) -> GatePolicy:
        value = text.strip().lower()
        if value in (GateKind.FULL, GateKind.NONE):
            return cls(GateKind(value))
        name, sep, number = value.partition(":")
        if name == GateKind.RATIO and sep:
            try:
                ratio = float(number)
            except ValueError:
                ratio = -1.0
            if 0.0 < ratio <= 1.0:
                return cls(GateKind.RATIO, ratio)
            raise ValueError(f"gate {text!r}: the ratio must be a number in (0, 1], e.g. ratio:0.8")
        raise ValueError(f"gate {text!r} is not a policy (one of: {GATE_EXAMPLES})")

    def __str__(self) -> str:
        return f"ratio:{self.ratio:g}" if self.kind is GateKind.RATIO else str(self.kind)


class WarmPhase(StrEnum):
    PENDING = "pending"  # not started yet (scanning the weight set)
    WARMING = "warming"
    DONE = "done"  # every range resident or read
    PARTIAL = "partial"  # stopped by the memory budget
    FAILED = "failed"  # files could not be read, or the warm itself broke
    CANCELLED = "cancelled"  # shutting down
    DISABLED = "disabled"  # --no-prewarm

    @property
    def finished(self) -> bool:
        return self not in (WarmPhase.PENDING, WarmPhase.WARMING)


@dataclass(frozen=True, slots=True)
class WarmView:
    """What the gate needs to know about the warm."""

    phase: WarmPhase
    fraction: float  # 0..1 of the weight set covered (resident or read)
    done_bytes: int = 0
    planned_bytes: int = 0
    detail: str | None = None  # why it was partial or failed


@dataclass(frozen=True, slots=True)
class GateDecision:
    open: bool
    reason: str
    timed_out: bool = False


def _progress(warm: WarmView) -> str:
    return (
        f"{warm.fraction * 100:.0f}% ({format_bytes(warm.done_bytes)} of "
        f"{format_bytes(warm.planned_bytes)})"
    )


def decide(
    policy: GatePolicy, warm: WarmView, elapsed_seconds: float, timeout_seconds: float
) -> GateDecision:
    """Whether the gate opens now, and why (or why not yet)."""
    if policy.kind is GateKind.NONE:
        return GateDecision(True, "gate none: vLLM may start at once, the pre-warm overlaps it")
    finished = _finished(warm)
    if finished is not None:
        return finished
    if policy.kind is GateKind.RATIO and warm.fraction >= policy.ratio:
        return GateDecision(True, f"{policy} reached: pre-warm at {_progress(warm)}")
    if elapsed_seconds >= timeout_seconds:
        return GateDecision(
            True,
            f"gate timeout: {timeout_seconds:g} s passed with the pre-warm at {_progress(warm)}; "
            "opened anyway (vLLM loads the rest from storage)",
            timed_out=True,
        )
    wanted = "100%" if policy.kind is GateKind.FULL else f"{policy.ratio * 100:g}%"
    return GateDecision(
        False,
        f"pre-warm {warm.phase}: {_progress(warm)}; gate {policy} opens at {wanted} "
        f"or after {timeout_seconds:g} s",
    )


def _finished(warm: WarmView) -> GateDecision | None:
    phase = warm.phase
    if phase is WarmPhase.DONE:
        return GateDecision(True, "pre-warm complete")
    if phase is WarmPhase.PARTIAL:
        return GateDecision(
            True, f"pre-warm stopped at {_progress(warm)}: {warm.detail or 'memory budget reached'}"
        )
    if phase is WarmPhase.FAILED:
        return GateDecision(
            True, f"pre-warm failed ({warm.detail}); opened so that vLLM is not held back"
        )
    if phase is WarmPhase.DISABLED:
        return GateDecision(True, "pre-warm disabled: nothing to wait for")
    if phase is WarmPhase.CANCELLED:
        return GateDecision(False, "shutting down")
    return None


class Gate:
    """The latched gate: evaluated until it opens, open from then on."""

    def __init__(self, policy: GatePolicy, timeout_seconds: float) -> None:
        self.policy = policy
        self.timeout_seconds = timeout_seconds
        self.decision = GateDecision(False, "starting")
        self.opened_after_seconds: float | None = None

    @property
    def is_open(self) -> bool:
        return self.decision.open

    def evaluate(self, warm: WarmView, elapsed_seconds: float) -> bool:
        """Re-evaluate; True when this call opened the gate."""
        if self.decision.open:
            return False
        self.decision = decide(self.policy, warm, elapsed_seconds, self.timeout_seconds)
        if self.decision.open:
            self.opened_after_seconds = elapsed_seconds
            return True
        return False
