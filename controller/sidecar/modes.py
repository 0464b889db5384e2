"""The page-cache state a vLLM start is labelled with.

Residency is measured when vLLM's process is seen starting (or when the gate opens, where
the process cannot be seen). A start "has a pre-warm" when this sidecar's warm began before
it and no earlier start has claimed that warm: after a crash, the next start finds the
weights resident because of the last load, not because of the warm; and a sidecar that the
kubelet restarted while vLLM was serving warmed for that vLLM, not for its next start.

The thresholds are ``SIDECAR_THRESHOLDS`` (``controller.sampling`` says why they differ
from the bench's):

- ``cold``: no pre-warm, residency at most ``cold_max``;
- ``warm``: no pre-warm, residency at least ``warm_min`` (an earlier load or keep-warm);
- ``prewarm_cold``: the warm started from a cold cache and brought the weights in: they were
  resident at vLLM's start, or the warm completed before vLLM answered (gate none: the
  overlap is the point);
- ``prewarm_warm``: the weights were already resident when the warm started;
- ``partial`` otherwise (the sample keeps the ratio), and when residency is unknown (the
  kernel would not tell the truth: then neither cold nor warm can be claimed, and
  ``mode_verified`` is null).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.sampling import SIDECAR_THRESHOLDS, mode_for_ratio
from exporter.linux.proc import CLOCK_TICKS
from exporter.samples import Mode

# /proc gives a process's start in clock ticks (10 ms), rounded down: a vLLM spawned within
# a tick after the warm began can look as if it started before it.
START_TIME_RESOLUTION_SECONDS = 1 / CLOCK_TICKS


def started_after_warm(warm_started: float, vllm_started: float) -> bool:
    """A vLLM start (monotonic seconds) came after the warm began, as far as /proc can
    tell: one started within a clock tick before the warm counts (they were
    simultaneous, as with --gate none and a start the moment the port answers)."""
    return warm_started <= vllm_started + START_TIME_RESOLUTION_SECONDS


@dataclass(frozen=True, slots=True)
class WarmContext:
    """The sidecar's pre-warm, as far as one vLLM start is concerned."""

    ratio_before: float | None  # residency when the warm started (None: unknown)
    complete_before_ready: bool  # the warm completed before vLLM answered 200


def label_mode(ratio_at_start: float | None, warm: WarmContext | None) -> tuple[Mode, bool | None]:
    """(mode, verified): verified is None when residency could not be measured."""
    if ratio_at_start is None:
        return Mode.PARTIAL, None
    if warm is None:
        return mode_for_ratio(ratio_at_start, SIDECAR_THRESHOLDS), True
    if warm.ratio_before is None:
        return Mode.PARTIAL, None
    resident_for_vllm = ratio_at_start >= SIDECAR_THRESHOLDS.warm_min or warm.complete_before_ready
    before = mode_for_ratio(warm.ratio_before, SIDECAR_THRESHOLDS)
    if not resident_for_vllm or before is Mode.PARTIAL:
        return Mode.PARTIAL, True
    return (Mode.PREWARM_COLD if before is Mode.COLD else Mode.PREWARM_WARM), True
