"""The dumper on fixed samples: the CSV's columns and values, the markdown's numbers and
the conclusion computed from them, the plot, and re-runs that lose nothing."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.report import CSV_COLUMNS, write_report
from exporter.samples import Mode, Outcome, Sample, SampleKind
from tests.support import pagewarm

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def tick(self) -> datetime:
        self.now += timedelta(seconds=10)
        return self.now


def _samples(
    cold: list[float],
    *,
    prewarm_cold: list[float],
    prewarm_cost: list[float],
    warm: list[float],
    prewarm_warm: list[float],
    warm_cost: float,
    model: str = "llama",
    scheduler: str = "mq-deadline",
    clock: Clock | None = None,
) -> list[Sample]:
    clock = clock or Clock()
    common = {
        "model": model,
        "host": "node-1",
        "device": "vda",
        "scheduler": scheduler,
        "fstype": "ext4",
        "model_bytes": 2 << 30,
        "memory_total_bytes": 24 << 30,
        "kernel": "6.18.0",
        "loader": "safetensors",
        "bench_id": "b1",
    }
    out = [Sample(**common, mode=Mode.COLD, seconds=s, timestamp=clock.tick()) for s in cold]
    out += [Sample(**common, mode=Mode.WARM, seconds=s, timestamp=clock.tick()) for s in warm]
    for mode, loads, costs in (
        (Mode.PREWARM_COLD, prewarm_cold, prewarm_cost),
        (Mode.PREWARM_WARM, prewarm_warm, [warm_cost] * len(prewarm_warm)),
    ):
        for load, cost in zip(loads, costs, strict=True):
            pre = Sample(
                **{**common, "loader": "prewarm"},
                kind=SampleKind.PREWARM,
                seconds=cost,
                strategy="populate",
                threads=8,
                bytes_read=(2 << 30) if mode is Mode.PREWARM_COLD else 0,
                throughput_bytes_per_second=(2 << 30) / cost,
                resident_ratio_before=0.0 if mode is Mode.PREWARM_COLD else 1.0,
                partial=False,
                timestamp=clock.tick(),
            )
            out.append(pre)
            out.append(
                Sample(
                    **common,
                    mode=mode,
                    seconds=load,
                    prewarm_seconds=cost,
                    prewarm_id=pre.id,
                    strategy="populate",
                    threads=8,
                    timestamp=clock.tick(),
                )
            )
    return out


def _helpful() -> list[Sample]:
    return _samples(
        cold=[10, 12, 11, 13, 14],
        prewarm_cold=[3, 4, 5, 4, 4],
        prewarm_cost=[5, 5, 6, 5, 5],
        warm=[2, 2.5, 3, 2, 2],
        prewarm_warm=[2.2] * 5,
        warm_cost=0.1,
    )


def test_csv_has_the_stable_columns_and_every_sample(tmp_path: Path) -> None:
    samples = _helpful()
    samples.append(
        Sample(
            model="llama",
            seconds=30.0,
            mode=Mode.COLD,
            outcome=Outcome.TIMED_OUT,
            error="no 200 within 30 s",
            timestamp=T0 + timedelta(hours=1),
            gpu="H200",  # a field from a newer version
        )
    )
    paths = write_report(tmp_path, samples, source="test")
    with paths.csv.open() as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert len(body) == len(samples) == 31
    assert [r["id"] for r in body] == [s.id for s in sorted(samples, key=lambda s: s.timestamp)]
    first = body[0]
    assert first["timestamp"] == "2026-11-01T12:00:10+00:00"  # ISO, UTC
    assert datetime.fromisoformat(first["timestamp"]) == T0 + timedelta(seconds=10)
    assert (first["kind"], first["mode"], first["seconds"], first["device"]) == (
        "load",
        "cold",
        "10.0",
        "vda",
    )
    pre = next(r for r in body if r["kind"] == "prewarm")
    assert (pre["strategy"], pre["threads"], pre["bytes_read"]) == ("populate", "8", str(2 << 30))
    last = body[-1]
    assert (last["outcome"], last["error"]) == ("timed_out", "no 200 within 30 s")
    assert json.loads(last["extra"]) == {"gpu": "H200"}


def test_markdown_numbers_and_conclusion_when_prewarm_pays_even_blocking(tmp_path: Path) -> None:
    paths = write_report(tmp_path, _helpful(), source="test")
    md = paths.markdown.read_text()
    # Setup
    for row in (
        "| host | node-1 |",
        "| device | vda |",
        "| I/O scheduler | mq-deadline |",
        "| filesystem | ext4 |",
        "| memory | 24.00 GiB |",
        "| model size | 2.00 GiB |",
    ):
        assert row in md
    # The table per mode: n, median, p90, min, max, failed
    assert "| cold | - | 5 | 12.000 | 13.600 | 10.000 | 14.000 | 0 |" in md
    assert "| prewarm_cold | populate:8 | 5 | 4.000 | 4.600 | 3.000 | 5.000 | 0 |" in md
    assert "| warm | - | 5 | 2.000 | 2.800 | 2.000 | 3.000 | 0 |" in md
    assert "| prewarm_warm | populate:8 | 5 | 2.200 |" in md
    # Pre-warm vs no pre-warm
    assert "## Pre-warm vs no pre-warm" in md
    assert "| cold load, median | 12.00 s |" in md
    assert "| pre-warm itself (its cost), median | 5.00 s |" in md
    assert "| time saved on the first request (cold - prewarm_cold) | 8.00 s (67%) |" in md
    assert "(cold - pre-warm - load) | 3.00 s |" in md
    # overhead when warm: 0.1 + (2.2 - 2.0) = 0.3 s; break-even share 0.3 / (3 + 0.3) = 9%
    assert "| 0.30 s (pre-warm 0.10 s) |" in md
    assert "once more than 9% of starts are cold" in md
    # The three answers, computed
    assert "1. Did pre-warm meaningfully reduce cold load time? **Yes.**" in md
    assert "4.00 s instead of 12.00 s cold (67% less)" in md
    assert "every pre-warmed load was faster than the median cold one" in md
    assert "takes 5.00 s to save 8.00 s (0.62 times the saving)" in md
    assert "3. Is the trade worth it? **Yes.** Even when it gates the start" in md
    assert "time to ready drops by 3.00 s per cold start" in md
    assert "Few samples" not in md
    # Pre-warm runs split by the cache state they found
    assert "| populate:8 | cold | 5 | 5.000 | 2.00 GiB |" in md
    assert "| populate:8 | warm | 5 | 0.100 | 0 B |" in md
    # The plot is written and linked
    assert "![load time per mode](storage_load_bench.png)" in md
    assert paths.plot is not None
    assert paths.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prewarm_runs_are_labelled_with_the_thresholds_of_the_command_that_ran_them(
    tmp_path: Path,
) -> None:
    """96% resident before a warm: partial by the bench's 98%, warm by the sidecar's 95%
    (the sidecar measures later, on hosts whose DAMON pageout takes a few pages)."""
    clock = Clock()
    samples = [
        Sample(
            model="llama",
            source=source,
            kind=SampleKind.PREWARM,
            loader="prewarm",
            seconds=0.5,
            strategy=strategy,
            threads=8,
            bytes_read=1 << 20,
            throughput_bytes_per_second=1e9,
            resident_ratio_before=before,
            partial=False,
            timestamp=clock.tick(),
        )
        for source, strategy, before in (
            ("bench", "populate", 0.96),
            ("sidecar", "read", 0.96),
            ("sidecar", "read", 0.5),
        )
    ]
    md = write_report(tmp_path, samples, source="test").markdown.read_text()
    assert "| populate:8 | partial | 1 |" in md
    assert "| read:8 | warm | 1 |" in md
    assert "| read:8 | partial | 1 |" in md
    assert "| populate:8 | warm |" not in md


def test_conclusion_when_prewarm_only_pays_when_overlapped(tmp_path: Path) -> None:
    samples = _samples(
        cold=[6, 6, 6],
        prewarm_cold=[2, 2, 2],
        prewarm_cost=[5, 5, 5],
        warm=[1.5, 1.5, 1.5],
        prewarm_warm=[1.5] * 3,
        warm_cost=0.05,
    )
    md = write_report(tmp_path, samples, source="test").markdown.read_text()
    assert "(cold - pre-warm - load) | -1.00 s |" in md
    assert "| break-even | when at least 1.00 s of the pre-warm overlap" in md
    assert "**Yes, when it overlaps the engine's start-up**" in md
    assert "would add 1.00 s per cold start instead" in md
    assert "moves the time rather than removing it (1.00 s behind)" in md


def test_conclusion_when_prewarm_does_not_help(tmp_path: Path) -> None:
    samples = _samples(
        cold=[2.0, 2.1, 1.9, 2.0],
        prewarm_cold=[1.95, 2.0, 2.05, 1.9],
        prewarm_cost=[1, 1, 1, 1],
        warm=[1.9] * 4,
        prewarm_warm=[1.9] * 4,
        warm_cost=0.01,
    )
    md = write_report(tmp_path, samples, source="test").markdown.read_text()
    assert "1. Did pre-warm meaningfully reduce cold load time? **No.**" in md
    assert "3. Is the trade worth it? **Not here.**" in md


def test_mismatches_schedulers_and_reruns_that_lose_nothing(tmp_path: Path) -> None:
    clock = Clock()
    first = _samples(
        [10, 11, 12],
        prewarm_cold=[4, 4, 4],
        prewarm_cost=[5, 5, 5],
        warm=[2, 2, 2],
        prewarm_warm=[2, 2, 2],
        warm_cost=0.1,
        clock=clock,
    )
    paths = write_report(tmp_path, first, source="first")
    second = _samples(
        [20, 21, 22],
        prewarm_cold=[4, 4, 4],
        prewarm_cost=[5, 5, 5],
        warm=[2, 2, 2],
        prewarm_warm=[2, 2, 2],
        warm_cost=0.1,
        scheduler="none",
        clock=clock,
    )
    second.append(
        Sample(
            model="llama",
            seconds=2.0,
            mode=Mode.WARM,
            declared_mode=Mode.COLD,
            mode_verified=False,
            scheduler="none",
            timestamp=clock.tick(),
        )
    )
    paths = write_report(tmp_path, second, source="second")
    ids = {row[1] for row in _rows(paths.csv)[1:]}
    assert ids == {s.id for s in first + second}  # the first run's samples are still there
    md = paths.markdown.read_text()
    assert "1 load(s) were not in the state they were declared in" in md
    assert "1 declared cold measured warm" in md
    assert "## I/O scheduler comparison" in md
    assert "| mq-deadline | 11.000 | 3 | 2.000 | 3 |" in md
    assert "| none | 21.000 | 3 | 2.000 | 4 |" in md
    assert "fastest under **mq-deadline** (11.00 s), 10.00 s (48%) faster than under none" in md
    # the same samples again add nothing
    paths = write_report(tmp_path, first, source="first again")
    assert len(_rows(paths.csv)) == 1 + len(first) + len(second)


def test_a_scheduler_gap_inside_the_run_to_run_spread_is_not_a_winner(tmp_path: Path) -> None:
    clock = Clock()
    common = {"prewarm_cold": [], "prewarm_cost": [], "prewarm_warm": [], "warm_cost": 0.1}
    samples = _samples([11.2, 11.6, 11.9], warm=[2.8], clock=clock, **common)  # type: ignore[arg-type]
    samples += _samples(
        [11.4, 11.7, 11.8],
        warm=[2.9],
        scheduler="none",
        clock=clock,
        **common,  # type: ignore[arg-type]
    )
    md = write_report(tmp_path, samples, source="noise").markdown.read_text()
    assert "No measurable difference between schedulers for cold loads" in md
    assert "fastest under" not in md


def test_report_cli_filters_and_keeps_earlier_samples(tmp_path: Path) -> None:
    store_a, store_b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "out"
    a = _samples(
        [10, 11, 12],
        prewarm_cold=[4, 4, 4],
        prewarm_cost=[5, 5, 5],
        warm=[2, 2, 2],
        prewarm_warm=[2, 2, 2],
        warm_cost=0.1,
    )
    b = _samples(
        [9],
        prewarm_cold=[3],
        prewarm_cost=[4],
        warm=[1],
        prewarm_warm=[1],
        warm_cost=0.1,
        model="other",
    )
    store_a.write_text("".join(s.to_json_line() for s in a))
    store_b.write_text("".join(s.to_json_line() for s in b))
    first = pagewarm("report", "--samples", store_a, "--out", out)
    assert first.returncode == 0, first.stderr
    second = pagewarm("report", "--samples", store_b, "--out", out, "--model", "other")
    assert second.returncode == 0, second.stderr
    rows = _rows(out / "storage_load_bench.csv")[1:]
    assert {r[CSV_COLUMNS.index("model")] for r in rows} == {"other"}  # filtered view
    everything = pagewarm("report", "--samples", store_b, "--out", out)
    assert everything.returncode == 0
    rows = _rows(out / "storage_load_bench.csv")[1:]
    assert len(rows) == len(a) + len(b)  # nothing lost between runs
    listed = pagewarm("samples", "--samples", store_a, "--kind", "prewarm", "--json")
    assert len(listed.stdout.splitlines()) == 6
    empty = pagewarm("report", "--samples", tmp_path / "none.jsonl", "--out", tmp_path / "x")
    assert empty.returncode == 2
    assert "no samples" in empty.stderr
