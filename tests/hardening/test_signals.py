"""SIGINT and SIGTERM during a warm: cancelled within one step, the partial result printed
(or recorded, by bench, measure and init), exit status 128 + the signal's number.

Real processes, real signals. The signal is sent once the warm is seen reading (the
model's residency rises), never after a sleep; the warm is rate-limited so that it would
take far longer than the test waits, and the result must show it stopped early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.residency import ResidencyProbe
from exporter.samples import Sample
from exporter.weightset import discover
from tests.support import REPO, evict_path

MiB = 1 << 20
RATE = "4MiB"  # the 64 MiB model would take 16 s; the signal comes after the first MiB


def _resident_bytes(model: Path) -> int:
    return ResidencyProbe().measure(discover(model)).cached_bytes


@pytest.fixture
def cold_model(small_model: Path) -> Iterator[Path]:
    evict_path(small_model)
    yield small_model
    evict_path(small_model)


def _start(argv: list[str], samples: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PAGEWARM_LOG_FORMAT": "json", "PAGEWARM_SAMPLES": str(samples)}
    # start_new_session: the signal goes to this process only (as `kill` would send it).
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _signal_once_warming(process: subprocess.Popen[str], model: Path, signum: int) -> None:
    """Wait until the warm has read its first MiB, then send ``signum``."""
    deadline = time.monotonic() + 120  # a guard against a hang, not a timing assert
    while _resident_bytes(model) < MiB:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the warm never started"
        time.sleep(0.05)
    process.send_signal(signum)


SIGNALS = [signal.SIGINT, signal.SIGTERM]


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_prewarm_stops_within_a_step_and_prints_the_partial_result(
    cold_model: Path, tmp_path: Path, signum: int, *, as_json: bool
) -> None:
    argv = ["prewarm", str(cold_model), "--rate-limit", RATE, "--strategy", "read"]
    process = _start([*argv, *(["--json"] if as_json else [])], tmp_path / "s.jsonl")
    _signal_once_warming(process, cold_model, signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    size = sum(f.stat().st_size for f in cold_model.glob("*.safetensors"))
    if as_json:
        document = json.loads(stdout)
        assert document["partial_reason"] == "cancelled"
        assert document["read_bytes"] < size / 2
    else:
        assert "PARTIAL: cancelled" in stdout
        assert stdout.startswith("read ")


def _samples(path: Path) -> list[Sample]:
    return [Sample.model_validate_json(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_bench_records_the_cancelled_prewarm_then_stops(
    cold_model: Path, tmp_path: Path, signum: int
) -> None:
    store = tmp_path / "samples.jsonl"
    argv = ["bench", str(cold_model), "--modes", "prewarm_cold", "--runs", "2"]
    process = _start([*argv, "--rate-limit", RATE, "--strategy", "read"], store)
    _signal_once_warming(process, cold_model, signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    samples = _samples(store)
    assert [s.kind for s in samples] == ["prewarm"]  # recorded; no load after the signal
    assert samples[0].partial is True
    assert samples[0].bench_id is not None


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_measure_records_the_cancelled_prewarm_then_stops(
    cold_model: Path, tmp_path: Path, signum: int
) -> None:
    store = tmp_path / "samples.jsonl"
    argv = ["measure", str(cold_model), "--prewarm", "--mode", "prewarm_cold"]
    process = _start([*argv, "--rate-limit", RATE, "--strategy", "read"], store)
    _signal_once_warming(process, cold_model, signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert "pre-warm cancelled" in stdout
    samples = _samples(store)
    assert [(s.kind, s.partial) for s in samples] == [("prewarm", True)]


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_init_records_the_cancelled_warm(cold_model: Path, tmp_path: Path, signum: int) -> None:
    store = tmp_path / "samples.jsonl"
    argv = ["init", str(cold_model), "--rate-limit", RATE, "--strategy", "read"]
    process = _start(argv, store)
    _signal_once_warming(process, cold_model, signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert "PARTIAL: cancelled" in stdout
    assert [s.partial for s in _samples(store)] == [True]
