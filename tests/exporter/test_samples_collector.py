"""Load and pre-warm metrics from the JSONL store: buckets, outcomes, state kept across
collections, a torn last line, rotation, truncation and samples seen twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from exporter.collectors.samples import LOAD_BUCKETS, SamplesCollector
from exporter.samples import Mode, Outcome, Sample, SampleKind
from tests.exporter.util import series, value

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _load(seconds: float, **fields: object) -> Sample:
    defaults: dict[str, object] = {"model": "m", "mode": Mode.COLD, "timestamp": T0}
    return Sample.model_validate({**defaults, **fields, "seconds": seconds})


def _prewarm(seconds: float, **fields: object) -> Sample:
    return _load(seconds, kind=SampleKind.PREWARM, mode=Mode.NONE, **fields)


def _append(store: Path, *samples: Sample, raw: str = "") -> None:
    with store.open("a") as handle:
        handle.writelines(s.to_json_line() for s in samples)
        handle.write(raw)


def test_load_histogram_has_the_contract_buckets_and_counts_ok_loads_only(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    _append(
        store,
        _load(0.5),
        _load(7.0),
        _load(1900.0),
        _load(3.0, outcome=Outcome.FAILED),
        _load(2.0, outcome=Outcome.TIMED_OUT),
    )
    metrics = list(SamplesCollector(store).collect())
    buckets = {
        dict(k)["le"]: v
        for k, v in series(metrics, "pagewarm_load_duration_seconds_bucket").items()
    }
    assert list(buckets) == [*(str(float(b)) for b in LOAD_BUCKETS), "+Inf"]
    assert LOAD_BUCKETS == (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200, 1800)
    assert buckets["1.0"] == 1
    assert buckets["10.0"] == 2
    assert buckets["1800.0"] == 2
    assert buckets["+Inf"] == 3
    assert value(metrics, "pagewarm_load_duration_seconds_count", mode="cold") == 3
    assert value(metrics, "pagewarm_load_duration_seconds_sum", mode="cold") == 1907.5
    outcomes = {dict(k)["outcome"]: v for k, v in series(metrics, "pagewarm_loads_total").items()}
    assert outcomes == {"ok": 3, "failed": 1, "timed_out": 1}


def test_last_load_is_the_latest_by_time_not_by_line(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    later = T0 + timedelta(minutes=5)
    _append(store, _load(9.0, timestamp=later), _load(4.0), _load(1.0, outcome=Outcome.FAILED))
    metrics = list(SamplesCollector(store).collect())
    assert value(metrics, "pagewarm_last_load_duration_seconds", mode="cold") == 9.0
    assert value(metrics, "pagewarm_last_load_timestamp_seconds", mode="cold") == (
        later.timestamp()
    )


def test_prewarm_outcomes_and_last_run(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    _append(
        store,
        _prewarm(4.0, bytes_read=8 << 30, throughput_bytes_per_second=2e9),
        _prewarm(2.0, bytes_read=1 << 30, partial=True, timestamp=T0 + timedelta(seconds=10)),
        _prewarm(1.0, outcome=Outcome.FAILED, timestamp=T0 + timedelta(seconds=20)),
    )
    metrics = list(SamplesCollector(store).collect())
    runs = {
        dict(k)["outcome"]: v for k, v in series(metrics, "pagewarm_prewarm_runs_total").items()
    }
    assert runs == {"ok": 1, "partial": 1, "failed": 1}
    assert value(metrics, "pagewarm_prewarm_duration_seconds_count", model="m") == 1
    # The last run that did not fail: the partial one, its throughput from bytes / seconds.
    assert value(metrics, "pagewarm_last_prewarm_duration_seconds", model="m") == 2.0
    assert value(metrics, "pagewarm_last_prewarm_bytes", model="m") == 1 << 30
    assert value(metrics, "pagewarm_last_prewarm_throughput_bytes_per_second", model="m") == (
        (1 << 30) / 2.0
    )
    assert series(metrics, "pagewarm_load_duration_seconds_count") == {}


def test_state_accumulates_and_a_torn_line_waits_for_its_end(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    collector = SamplesCollector(store)
    assert series(list(collector.collect()), "pagewarm_loads_total") == {}  # no store yet

    torn = _load(3.0).to_json_line()
    _append(store, _load(2.0), raw=torn[:25])
    count = "pagewarm_load_duration_seconds_count"
    assert value(list(collector.collect()), count) == 1
    with store.open("a") as handle:
        handle.write(torn[25:])
    metrics = list(collector.collect())
    assert value(metrics, count) == 2
    assert value(metrics, "pagewarm_sample_store_invalid_lines_total") == 0
    assert value(list(collector.collect()), count) == 2  # nothing new, nothing counted twice


def test_rotation_and_truncation_keep_what_was_counted(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    collector = SamplesCollector(store)
    count = "pagewarm_load_duration_seconds_count"
    first, second = _load(1.5), _load(2.5)
    _append(store, first, second)
    assert value(list(collector.collect()), count) == 2

    # logrotate's create mode: renamed away, a new file takes its place.
    store.rename(tmp_path / "samples.jsonl.1")
    _append(store, _load(3.5))
    assert value(list(collector.collect()), count) == 3

    # copytruncate mode: the same file emptied, then appended to again.
    store.write_text("")
    _append(store, _load(4.5))
    assert value(list(collector.collect()), count) == 4

    # A store rewritten with samples already counted (a compaction): counted once.
    store.unlink()
    _append(store, first, second, _load(5.5))
    metrics = list(collector.collect())
    assert value(metrics, count) == 5
    assert value(metrics, "pagewarm_load_duration_seconds_sum") == 1.5 + 2.5 + 3.5 + 4.5 + 5.5


def test_invalid_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    _append(store, _load(2.0), raw='not json\n{"model": "m"}\n')
    _append(store, raw='{"model": "m", "seconds": -1}\n{"model": "m", "seconds": NaN}\n')
    metrics = list(SamplesCollector(store).collect())
    assert value(metrics, "pagewarm_load_duration_seconds_count") == 1
    assert value(metrics, "pagewarm_sample_store_invalid_lines_total") == 4


def test_every_outcome_series_exists_from_the_first_sample(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    _append(store, _load(2.0, mode=Mode.WARM), _prewarm(1.0))
    metrics = list(SamplesCollector(store).collect())
    assert value(metrics, "pagewarm_loads_total", mode="warm", outcome="failed") == 0
    assert value(metrics, "pagewarm_prewarm_runs_total", outcome="partial") == 0


def test_a_large_store_is_read_whole_in_one_collection(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    garbage = "x" * 1000 + "\n"
    _append(store, raw=garbage * 100)  # 100 KB of lines that are not samples
    _append(store, *(_load(float(i % 50)) for i in range(400)))
    metrics = list(SamplesCollector(store).collect())
    assert value(metrics, "pagewarm_load_duration_seconds_count") == 400
    assert value(metrics, "pagewarm_sample_store_invalid_lines_total") == 100
