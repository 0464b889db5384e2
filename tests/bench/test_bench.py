"""The bench procedure: its order, its mode checks, and real runs on a small model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from controller.bench import Variant, plan_steps
from controller.prewarm import Strategy
from controller.sampling import BENCH_THRESHOLDS, derive_mode
from exporter.samples import Mode, Outcome, SampleKind, read_all
from tests.support import REPO, pagewarm, require_root

ALL = (Mode.COLD, Mode.WARM, Mode.PREWARM_COLD, Mode.PREWARM_WARM)


def test_each_round_holds_every_cell_once_in_a_seeded_order() -> None:
    variants = (Variant(Strategy.POPULATE, 1), Variant(Strategy.READ, 8))
    steps = plan_steps(ALL, 4, seed=11, schedulers=("none", "mq-deadline"), variants=variants)
    # 2 schedulers x (cold, warm, 2 variants x prewarm_cold, 2 x prewarm_warm) = 12 a round
    assert len(steps) == 4 * 12
    cells = [(s.mode, s.scheduler, s.variant) for s in steps]
    for r in range(4):
        round_cells = cells[r * 12 : (r + 1) * 12]
        assert len(set(round_cells)) == 12  # each cell once per round
        assert [s.round for s in steps[r * 12 : (r + 1) * 12]] == [r] * 12
    assert all(
        (s.variant is None) == (s.mode not in (Mode.PREWARM_COLD, Mode.PREWARM_WARM)) for s in steps
    )
    # Reproducible with the seed, different with another, and actually shuffled.
    again = plan_steps(ALL, 4, seed=11, schedulers=("none", "mq-deadline"), variants=variants)
    assert steps == again
    other = plan_steps(ALL, 4, seed=12, schedulers=("none", "mq-deadline"), variants=variants)
    assert [s.mode for s in other] != [s.mode for s in steps]
    rounds = {tuple(c[:2] for c in cells[r * 12 : (r + 1) * 12]) for r in range(4)}
    assert len(rounds) > 1  # not the same order every round


def test_modes_are_balanced_in_position_over_many_rounds() -> None:
    # Drift must not favour a mode: over many rounds each mode leads a round about as often.
    steps = plan_steps(ALL, 400, seed=1)
    leaders = Counter(steps[r * 4].mode for r in range(400))
    assert set(leaders) == set(ALL)
    assert min(leaders.values()) > 60


@pytest.mark.parametrize(
    ("declared", "before", "prewarm_before", "expected"),
    [
        (Mode.COLD, 0.0, None, (Mode.COLD, True)),
        (Mode.COLD, 1.0, None, (Mode.WARM, False)),  # declared cold, was resident
        (Mode.COLD, 0.5, None, (Mode.PARTIAL, False)),
        (Mode.COLD, None, None, (Mode.COLD, None)),  # unknown: as declared, unverified
        (Mode.WARM, 1.0, None, (Mode.WARM, True)),
        (Mode.WARM, 0.0, None, (Mode.COLD, False)),
        (Mode.PREWARM_COLD, 1.0, 0.0, (Mode.PREWARM_COLD, True)),
        (Mode.PREWARM_COLD, 1.0, 1.0, (Mode.PREWARM_WARM, False)),
        (Mode.PREWARM_WARM, 1.0, 0.0, (Mode.PREWARM_COLD, False)),
        (Mode.PREWARM_WARM, 1.0, 1.0, (Mode.PREWARM_WARM, True)),
        (None, 0.0, None, (Mode.COLD, True)),
        (None, 1.0, None, (Mode.WARM, True)),
        (None, 1.0, 0.0, (Mode.PREWARM_COLD, True)),
    ],
)
def test_mode_derivation(
    declared: Mode | None,
    before: float | None,
    prewarm_before: float | None,
    expected: tuple[Mode, bool | None],
) -> None:
    prewarmed = declared in (Mode.PREWARM_COLD, Mode.PREWARM_WARM) or prewarm_before is not None
    measured = derive_mode(
        declared, before, prewarm_before, prewarmed=prewarmed, thresholds=BENCH_THRESHOLDS
    )
    assert measured == expected


def test_bench_end_to_end_on_a_small_model(small_model: Path, tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    out = tmp_path / "report"
    result = pagewarm(
        "bench",
        small_model,
        "--runs",
        "2",
        "--seed",
        "5",
        "--prewarm-variants",
        "populate:2,read:2",
        "--out",
        out,
        env={"PAGEWARM_SAMPLES": str(store)},
        timeout=280,
    )
    assert result.returncode == 0, result.stderr
    samples = read_all(store)
    loads = [s for s in samples if s.kind is SampleKind.LOAD]
    prewarms = {s.id: s for s in samples if s.kind is SampleKind.PREWARM}
    # 2 rounds x (cold, warm, 2 variants x prewarm_cold, 2 x prewarm_warm)
    assert len(loads) == 12
    assert len(prewarms) == 8
    assert len({s.bench_id for s in samples}) == 1
    assert all(s.outcome is Outcome.OK and s.mode_verified is True for s in loads)
    by_mode = Counter((s.mode, s.strategy, s.threads) for s in loads)
    assert by_mode[(Mode.COLD, None, None)] == 2
    assert by_mode[(Mode.WARM, None, None)] == 2
    for strategy in ("populate", "read"):
        assert by_mode[(Mode.PREWARM_COLD, strategy, 2)] == 2
        assert by_mode[(Mode.PREWARM_WARM, strategy, 2)] == 2
    # Residency with a margin: these VMs' DAMON pageout takes a few pages of a model that
    # was just read (and a warm pre-warm then reads those few back).
    for s in loads:
        assert s.resident_ratio_after is not None and s.resident_ratio_after >= 0.95
        assert s.model == "small" and s.loader == "safetensors" and s.source == "bench"
        assert s.fstype and s.host and s.model_bytes
        assert s.resident_ratio_before is not None
        if s.mode is Mode.COLD:
            assert s.resident_ratio_before <= 0.05
        else:
            assert s.resident_ratio_before >= 0.95
        if s.mode in (Mode.PREWARM_COLD, Mode.PREWARM_WARM):
            pre = prewarms[s.prewarm_id or ""]
            assert pre.timestamp < s.timestamp
            assert s.prewarm_seconds == pre.seconds
            assert (pre.strategy, pre.threads) == (s.strategy, s.threads)
            assert pre.resident_ratio_before is not None and pre.bytes_read is not None
            if s.mode is Mode.PREWARM_COLD:
                assert pre.resident_ratio_before <= 0.05
                assert pre.bytes_read >= 0.95 * s.model_bytes
            else:
                assert pre.resident_ratio_before >= 0.95
                assert pre.bytes_read <= 0.05 * s.model_bytes
    # Samples are in the order the steps ran; the order printed matches the plan.
    assert [s.timestamp for s in samples] == sorted(s.timestamp for s in samples)
    assert "median load: cold" in result.stdout
    md = (out / "storage_load_bench.md").read_text()
    assert "prewarm_cold | populate:2 | 2 |" in md
    assert "prewarm_cold | read:2 | 2 |" in md


MAPPER = """
import mmap, sys, time
from pathlib import Path
maps = []
for path in sorted(Path(sys.argv[1]).glob("*.safetensors")):
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    for offset in range(0, len(m), mmap.PAGESIZE):
        m[offset]  # mapped and touched: DONTNEED cannot drop these pages
    maps.append(m)
Path(sys.argv[2]).touch()
time.sleep(600)
"""


def test_a_cold_run_that_is_not_cold_is_recorded_and_reported_as_such(
    small_model: Path, tmp_path: Path
) -> None:
    ready = tmp_path / "mapped"
    holder = subprocess.Popen(
        [sys.executable, "-c", MAPPER, str(small_model), str(ready)], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        store = tmp_path / "samples.jsonl"
        result = pagewarm(
            "bench",
            small_model,
            "--modes",
            "cold",
            "--runs",
            "1",
            env={"PAGEWARM_SAMPLES": str(store)},
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr
    (sample,) = read_all(store)
    assert sample.declared_mode is Mode.COLD
    assert sample.mode is not Mode.COLD  # never silently kept as cold
    assert sample.mode_verified is False
    assert sample.resident_ratio_before is not None and sample.resident_ratio_before > 0.5
    events = [
        json.loads(line)["event"] for line in result.stderr.splitlines() if line.startswith("{")
    ]
    assert any("cold run was NOT cold" in e for e in events)


def test_measure_derives_the_mode_from_residency(small_model: Path, tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    env = {"PAGEWARM_SAMPLES": str(store)}
    assert pagewarm("measure", small_model, "--evict", env=env).returncode == 0
    assert pagewarm("measure", small_model, "--model-name", "org/x", env=env).returncode == 0
    cold, warm = read_all(store)
    assert (cold.mode, cold.mode_verified, cold.declared_mode) == (Mode.COLD, True, None)
    assert (warm.mode, warm.model) == (Mode.WARM, "org/x")


def test_drop_caches_as_root(small_model: Path, tmp_path: Path) -> None:
    require_root("--drop-caches writes /proc/sys/vm/drop_caches")
    store = tmp_path / "samples.jsonl"
    result = pagewarm(
        "bench",
        small_model,
        "--modes",
        "cold",
        "--runs",
        "1",
        "--drop-caches",
        env={"PAGEWARM_SAMPLES": str(store)},
    )
    assert result.returncode == 0, result.stderr
    assert "whole host's page cache" in result.stderr
    (sample,) = read_all(store)
    assert (sample.mode, sample.mode_verified) == (Mode.COLD, True)


def test_bad_input_is_a_usage_error(small_model: Path, tmp_path: Path) -> None:
    env = {"PAGEWARM_SAMPLES": str(tmp_path / "s.jsonl")}
    bad_variant = pagewarm("bench", small_model, "--prewarm-variants", "fast:2", env=env)
    assert bad_variant.returncode == 2
    # The words of --strategy and PAGEWARM_PREWARM_STRATEGY, naming the flag.
    assert "--prewarm-variants fast:2: strategy: Input should be 'auto'" in bad_variant.stderr
    both = pagewarm("measure", small_model, "--loader", "torch", "--url", "http://x/", env=env)
    assert both.returncode == 2
    assert not (tmp_path / "s.jsonl").exists()
