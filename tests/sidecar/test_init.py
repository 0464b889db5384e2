"""`pagewarm init`, the init-container form: warm, record a pre-warm sample, exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from controller.synth import synth
from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.core.test_prewarm import small_memory_cgroup  # noqa: F401 - a fixture, used below
from tests.memcg import MemoryCgroup
from tests.sidecar.pod import read_jsonl, wait_for
from tests.support import REPO, evict_path, pagewarm

MiB = 1 << 20


def test_init_warms_and_records_a_prewarm_sample(small_model: Path, tmp_path: Path) -> None:
    evict_path(small_model)
    samples = tmp_path / "samples.jsonl"
    result = pagewarm("init", small_model, "--samples", samples, "--model-name", "llama", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["partial"] is False and doc["read_bytes"] > 0.95 * doc["size_bytes"]
    # Not exactly 1.0: DAMON pageout on these VMs may take a few fresh pages.
    ratio = ResidencyProbe().measure(discover(small_model)).ratio
    assert ratio is not None and ratio > 0.95
    [sample] = read_jsonl(samples)
    assert sample["kind"] == "prewarm" and sample["source"] == "init"
    assert sample["model"] == "llama" and sample["outcome"] == "ok"
    assert sample["partial"] is False and sample["bytes_read"] == doc["read_bytes"]


def test_init_partial_because_of_the_memory_budget_is_success_with_a_warning(
    tmp_path: Path,
    small_memory_cgroup: MemoryCgroup,  # noqa: F811 - the fixture imported above
) -> None:
    model = tmp_path / "model"
    synth(model, 256 * MiB, shards=4)
    evict_path(model)
    samples = tmp_path / "samples.jsonl"
    argv = ["sh", "-c", small_memory_cgroup.join_command(), "sh", sys.executable]
    argv += ["-m", "controller.cli", "init", str(model)]
    argv += ["--reserve", "16MiB", "--samples", str(samples)]
    env = {**os.environ, "PAGEWARM_LOG_FORMAT": "json"}
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pre-warm partial" in result.stderr
    assert "PARTIAL: memory budget reached" in result.stdout
    [sample] = read_jsonl(samples)
    assert sample["partial"] is True and sample["outcome"] == "ok"
    assert small_memory_cgroup.limit_reason in sample["partial_reason"]


def test_init_without_a_writable_store_still_warms(small_model: Path, tmp_path: Path) -> None:
    evict_path(small_model)
    result = pagewarm("init", small_model, "--samples", "/proc/pagewarm/samples.jsonl")
    assert result.returncode == 0, result.stderr
    assert "pre-warm sample not recorded" in result.stderr
    ratio = ResidencyProbe().measure(discover(small_model)).ratio
    assert ratio is not None and ratio > 0.95


def test_init_stops_on_sigterm(tmp_path: Path) -> None:
    model = tmp_path / "model"
    synth(model, 32 * MiB, shards=2)
    evict_path(model)
    samples = tmp_path / "samples.jsonl"
    stderr = tmp_path / "init.log"
    argv = [sys.executable, "-m", "controller.cli", "init", str(model), "--samples", str(samples)]
    argv += ["--rate-limit", "4MiB"]
    env = {**os.environ, "PAGEWARM_LOG_FORMAT": "json"}
    with stderr.open("wb") as err:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: _warming(model), 30, "the warm to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    [sample] = read_jsonl(samples)
    assert sample["partial"] is True and sample["partial_reason"] == "cancelled"
    assert "signal received: stopping" in stderr.read_text()


def _warming(model: Path) -> bool:
    ratio = ResidencyProbe().measure(discover(model)).ratio
    return ratio is not None and ratio > 0.02
