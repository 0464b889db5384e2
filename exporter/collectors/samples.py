"""Collector ``samples``: load durations and pre-warm runs, from the JSONL sample store that
the controller appends to (schema: ``exporter.samples``).

The store is read incrementally on every collection and folded into state kept for the
life of the process, so histograms and counters only grow: a rotated or truncated store
is read again from its start (``SampleReader``), a torn last line waits until it is
complete, and a sample seen twice (by its id, e.g. when a rotation copied it) is counted
once. A line that is not a valid sample (``exporter.samples`` says which are not) is
counted in ``pagewarm_sample_store_invalid_lines_total`` and never costs the sample after
it. Restarting the exporter reads the whole store again, which Prometheus sees as a
counter reset.

- kind=load: ``pagewarm_load_duration_seconds{model,mode}`` (ok loads only),
  ``pagewarm_loads_total{model,mode,outcome}`` (every outcome), and the last ok load's
  duration and time.
- kind=load with a replayed start-up profile (the sidecar's): ``pagewarm_startup_profile_
  replays_total{model}``, ``..._read_bytes_total{model}`` (what the replays brought in),
  ``..._stale_entries_total{model}`` (files changed since the recording: re-record).
- kind=prewarm: ``pagewarm_prewarm_duration_seconds{model}`` (complete ok runs),
  ``pagewarm_prewarm_runs_total{model,outcome}`` with outcome ok|partial|failed, and the
  last run that did not fail: duration, bytes read, throughput, time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, Metric

from exporter.collectors.base import counter, gauge, histogram
from exporter.models import label_value
from exporter.samples import Mode, Outcome, Sample, SampleKind, SampleReader

LOAD_BUCKETS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200, 1800,
)  # fmt: skip
# A pre-warm of a model that is already resident takes well under a second.
PREWARM_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, *LOAD_BUCKETS)
PREWARM_OUTCOMES = ("ok", "partial", "failed")
# The modes a load of a configured model starts from; their series exist from the start.
EXPECTED_LOAD_MODES = (Mode.COLD, Mode.WARM, Mode.PREWARM_COLD, Mode.PREWARM_WARM)
# Ids remembered to count a sample once when a rotation hands it to us again.
SEEN_IDS_LIMIT = 65536
# The store is folded this many bytes (some fifty samples) at a time, so that a large
# store read at start-up never holds all its samples in memory at once.
READ_CHUNK_BYTES = 32 << 10


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)  # per bucket, not cumulative; last one is +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        index = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[index] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        edges = [*(str(float(b)) for b in self.bounds), "+Inf"]  # as client_python: 1.0
        out, running = [], 0
        for edge, count in zip(edges, self.counts, strict=True):
            running += count
            out.append((edge, float(running)))
        return out


@dataclass(frozen=True, slots=True)
class Last:
    timestamp: float
    seconds: float
    bytes_read: int | None = None
    throughput: float | None = None


def _newer(current: Last | None, candidate: Last) -> Last:
    # By the sample's own time: several writers may append out of order.
    return candidate if current is None or candidate.timestamp >= current.timestamp else current


def prewarm_outcome(sample: Sample) -> str:
    if sample.outcome is Outcome.OK:
        return "partial" if sample.partial else "ok"
    return "failed"


@dataclass(slots=True)
class SampleState:
    """Everything the store has said so far, folded."""

    load_histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    loads: dict[tuple[str, str, str], int] = field(default_factory=dict)
    last_loads: dict[tuple[str, str], Last] = field(default_factory=dict)
    prewarm_histograms: dict[str, Histogram] = field(default_factory=dict)
    prewarm_runs: dict[tuple[str, str], int] = field(default_factory=dict)
    last_prewarms: dict[str, Last] = field(default_factory=dict)
    # model -> [replays, bytes read, stale entries] of start-up profiles
    profile_replays: dict[str, list[int]] = field(default_factory=dict)

    def expect(self, model: str) -> None:
        """Zero series for a configured model before its first sample: rate() and
        increase() see a load only when a scrape saw the series before it, and a pod's
        first load (the cold start that matters) is usually its only one."""
        for mode in EXPECTED_LOAD_MODES:
            self.load_histograms.setdefault((model, mode.value), Histogram(LOAD_BUCKETS))
            for outcome in Outcome:
                self.loads.setdefault((model, mode.value, outcome.value), 0)
        self.prewarm_histograms.setdefault(model, Histogram(PREWARM_BUCKETS))
        for name in PREWARM_OUTCOMES:
            self.prewarm_runs.setdefault((model, name), 0)

    def add(self, sample: Sample) -> None:
        # Validation has made seconds finite and non-negative, timestamps UTC.
        model = label_value(sample.model)
        if sample.kind is SampleKind.LOAD:
            self._add_load(model, sample)
        elif sample.kind is SampleKind.PREWARM:
            self._add_prewarm(model, sample)

    def _add_load(self, model: str, sample: Sample) -> None:
        if sample.startup_profile_phase == "replayed":
            totals = self.profile_replays.setdefault(model, [0, 0, 0])
            totals[0] += 1
            totals[1] += sample.startup_profile_read_bytes or 0
            totals[2] += sample.startup_profile_stale_entries or 0
        key = (model, sample.mode.value)
        for outcome in Outcome:  # every outcome from the first sample on: increase() needs it
            self.loads.setdefault((*key, outcome.value), 0)
        self.loads[(*key, sample.outcome.value)] += 1
        if sample.outcome is not Outcome.OK:
            return
        self.load_histograms.setdefault(key, Histogram(LOAD_BUCKETS)).observe(sample.seconds)
        last = Last(sample.timestamp.timestamp(), sample.seconds)
        self.last_loads[key] = _newer(self.last_loads.get(key), last)

    def _add_prewarm(self, model: str, sample: Sample) -> None:
        outcome = prewarm_outcome(sample)
        for name in PREWARM_OUTCOMES:
            self.prewarm_runs.setdefault((model, name), 0)
        self.prewarm_runs[(model, outcome)] += 1
        if outcome == "failed":
            return
        if outcome == "ok":
            histogram = self.prewarm_histograms.setdefault(model, Histogram(PREWARM_BUCKETS))
            histogram.observe(sample.seconds)
        throughput = sample.throughput_bytes_per_second
        if throughput is None and sample.bytes_read is not None and sample.seconds > 0:
            throughput = sample.bytes_read / sample.seconds
        last = Last(sample.timestamp.timestamp(), sample.seconds, sample.bytes_read, throughput)
        self.last_prewarms[model] = _newer(self.last_prewarms.get(model), last)


class SamplesCollector:
    name = "samples"

    def __init__(self, store: Path, expected_models: Iterable[str] = ()) -> None:
        self.reader = SampleReader(store)
        self.state = SampleState()
        for model in expected_models:
            self.state.expect(label_value(model))
        self._seen: OrderedDict[str, None] = OrderedDict()
        # One collection at a time in the exporter, but a registry may be shared.
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            while True:  # chunk by chunk, until a read moves the reader no further
                start = self.reader.offset
                for sample in self.reader.read_new(READ_CHUNK_BYTES):
                    if self._first_time(sample.id):
                        self.state.add(sample)
                if self.reader.offset == start:
                    break
            return iter(
                [
                    *self._load_families(),
                    *self._prewarm_families(),
                    *self._profile_families(),
                    self._invalid(),
                ]
            )

    def _first_time(self, sample_id: str) -> bool:
        if sample_id in self._seen:
            return False
        self._seen[sample_id] = None
        if len(self._seen) > SEEN_IDS_LIMIT:
            self._seen.popitem(last=False)
        return True

    def _load_families(self) -> list[Metric]:
        state = self.state
        duration = histogram(
            "pagewarm_load_duration_seconds",
            "Model load durations (successful loads), by the page-cache state they started from.",
            ["model", "mode"],
        )
        for (model, mode), hist in sorted(state.load_histograms.items()):
            duration.add_metric([model, mode], hist.cumulative(), hist.total)
        loads = counter(
            "pagewarm_loads", "Model loads recorded, by outcome.", ["model", "mode", "outcome"]
        )
        for labels, count in sorted(state.loads.items()):
            loads.add_metric(list(labels), count)
        last_duration = gauge(
            "pagewarm_last_load_duration_seconds",
            "Duration of the last successful load.",
            ["model", "mode"],
        )
        last_time = gauge(
            "pagewarm_last_load_timestamp_seconds",
            "When the last successful load ended (Unix time).",
            ["model", "mode"],
        )
        for (model, mode), last in sorted(state.last_loads.items()):
            last_duration.add_metric([model, mode], last.seconds)
            last_time.add_metric([model, mode], last.timestamp)
        return [duration, loads, last_duration, last_time]

    def _prewarm_families(self) -> list[Metric]:
        state = self.state
        duration = histogram(
            "pagewarm_prewarm_duration_seconds",
            "Durations of complete, successful pre-warm runs.",
            ["model"],
        )
        for model, hist in sorted(state.prewarm_histograms.items()):
            duration.add_metric([model], hist.cumulative(), hist.total)
        runs = counter(
            "pagewarm_prewarm_runs",
            "Pre-warm runs, by outcome (partial: stopped by the memory budget or a cancel).",
            ["model", "outcome"],
        )
        for labels, count in sorted(state.prewarm_runs.items()):
            runs.add_metric(list(labels), count)
        last = {
            "duration_seconds": gauge(
                "pagewarm_last_prewarm_duration_seconds",
                "Duration of the last pre-warm run that did not fail.",
                ["model"],
            ),
            "bytes": gauge(
                "pagewarm_last_prewarm_bytes",
                "Bytes read by the last pre-warm run that did not fail.",
                ["model"],
            ),
            "throughput": gauge(
                "pagewarm_last_prewarm_throughput_bytes_per_second",
                "Read throughput of the last pre-warm run that did not fail.",
                ["model"],
            ),
            "timestamp": gauge(
                "pagewarm_last_prewarm_timestamp_seconds",
                "When the last pre-warm run that did not fail ended (Unix time).",
                ["model"],
            ),
        }
        for model, run in sorted(state.last_prewarms.items()):
            last["duration_seconds"].add_metric([model], run.seconds)
            last["timestamp"].add_metric([model], run.timestamp)
            if run.bytes_read is not None:
                last["bytes"].add_metric([model], run.bytes_read)
            if run.throughput is not None:
                last["throughput"].add_metric([model], run.throughput)
        return [duration, runs, *last.values()]

    def _profile_families(self) -> list[Metric]:
        """Only once a start-up profile was replayed: most exporters never see one."""
        if not self.state.profile_replays:
            return []
        families: list[CounterMetricFamily] = [
            counter(
                "pagewarm_startup_profile_replays",
                "Loads started after the sidecar replayed a start-up profile.",
                ["model"],
            ),
            counter(
                "pagewarm_startup_profile_read_bytes",
                "Bytes the start-up profile replays brought into the page cache.",
                ["model"],
            ),
            counter(
                "pagewarm_startup_profile_stale_entries",
                "Profile files skipped as stale (changed since the recording: record again).",
                ["model"],
            ),
        ]
        for model, totals in sorted(self.state.profile_replays.items()):
            for family, value in zip(families, totals, strict=True):
                family.add_metric([model], value)
        return list(families)

    def _invalid(self) -> Metric:
        invalid = counter(
            "pagewarm_sample_store_invalid_lines",
            "Lines of the sample store that were not valid samples (skipped).",
        )
        invalid.add_metric([], self.reader.invalid_lines)
        return invalid
