"""The sidecar's samples, in the store's schema (``exporter.samples``), source "sidecar":
one kind=load sample per timed vLLM start, one kind=prewarm sample per warm (as the bench
records them, so the exporter's pagewarm_prewarm_* metrics and the alerts see them).

Appends run in a thread, each one whole and fsync'd (``SampleStore``); a shutdown waits for
the appends in flight, so SIGTERM never leaves half a sample behind.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from controller.prewarm import PrewarmResult
from controller.samplestore import SampleStore
from controller.sampling import SampleHeader, prewarm_link
from controller.sidecar.modes import WarmContext, label_mode
from controller.sidecar.vllm import LoadObservation
from exporter.samples import Sample, SampleKind

log = structlog.get_logger("pagewarm")


@dataclass(frozen=True, slots=True)
class SampleContext:
    """What every sample of this sidecar says about where it was taken."""

    header: SampleHeader
    health_url: str | None = None
    gate_policy: str | None = None


def prewarm_sample(context: SampleContext, result: PrewarmResult) -> Sample:
    return context.header.prewarm_sample(
        result,
        {
            "partial_reason": result.partial_reason,
            **({"gate_policy": context.gate_policy} if context.gate_policy else {}),
        },
    )


def _wall(monotonic: float) -> datetime:
    return datetime.fromtimestamp(time.time() - (time.monotonic() - monotonic), UTC)


def load_sample(
    context: SampleContext,
    observation: LoadObservation,
    *,
    ratio_after: float | None,
    warm: WarmContext | None,
    prewarm: Sample | None,
    gate_timed_out: bool,
    startup: dict[str, object] | None = None,
) -> Sample:
    """The sample of one vLLM start. ``warm`` is this sidecar's pre-warm when the start
    claimed it; ``prewarm`` its sample when the warm had finished by then."""
    start = observation.start
    mode, verified = label_mode(start.ratio_at_start, warm)
    return context.header.sample(
        {
            **prewarm_link(prewarm),
            "kind": SampleKind.LOAD,
            "timestamp": _wall(observation.ended_monotonic),
            "mode": mode,
            "mode_verified": verified,
            "loader": "vllm",
            "target": context.health_url,
            "seconds": observation.seconds,
            "resident_ratio_before": start.ratio_at_start,
            "resident_ratio_after": ratio_after,
            "outcome": observation.outcome,
            "error": observation.error,
            # Extra fields (the schema keeps them): how this load was timed and labelled.
            "timing_origin": str(start.origin),
            "vllm_start": start.index,
            "vllm_pid": start.process.pid if start.process else None,
            "vllm_started_at": _wall(start.started_monotonic).isoformat(),
            "gate_policy": context.gate_policy,
            "gate_timed_out": gate_timed_out,
            "prewarm_resident_ratio_before": warm.ratio_before if warm else None,
            "prewarm_complete_before_ready": warm.complete_before_ready if warm else None,
            **observation.log.sample_fields(observation.seconds),
            **(startup or {}),
        }
    )


class SampleWriter:
    """Appends samples off the event loop; ``drain()`` waits for those in flight."""

    def __init__(self, store: SampleStore) -> None:
        self.store = store
        self._pending: set[asyncio.Future[bool]] = set()

    async def append(self, sample: Sample) -> bool:
        """True once the sample is on disk. A cancelled caller does not cancel the append:
        it finishes in its thread, and ``drain()`` waits for it."""
        future = asyncio.ensure_future(asyncio.to_thread(self._append, sample))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return await asyncio.shield(future)

    def _append(self, sample: Sample) -> bool:
        try:
            self.store.append(sample)
        except OSError as exc:
            log.error(  # noqa: TRY400 - the reason is the message; a traceback adds nothing
                "sample not recorded",
                store=str(self.store.path),
                error=f"{exc.strerror or exc}",
                kind=str(sample.kind),
            )
            return False
        return True

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
