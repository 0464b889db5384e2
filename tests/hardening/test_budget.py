"""Thread buffers against the memory budget: a warm makes progress whenever any budget
exists (buffers take a bounded share of it, fewer and smaller), and fails with the reason,
never a 0-byte "partial" with exit 0, when none exists. Real reads into the real page
cache; a real memory cgroup for the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.memguard import MemoryGuard, MemorySnapshot
from controller.prewarm import BUFFER_BUDGET_DIVISOR, PAGE, PrewarmOptions, Strategy, prewarm
from exporter.weightset import discover
from tests.memcg import memory_cgroup
from tests.support import REPO, disk_directory, evict_path, write_random

MiB = 1 << 20


@pytest.fixture(scope="module")
def model() -> Iterator[Path]:
    root = disk_directory("pagewarm-budget-")
    for n in range(4):
        write_random(root / f"model-{n + 1:05d}-of-00004.safetensors", 64 * MiB)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _guard(budget: int) -> MemoryGuard:
    """A guard whose budget is ``budget`` bytes (the node's numbers, fixed for the test)."""
    guard = MemoryGuard(reserve_bytes=0)
    guard.start = MemorySnapshot(budget, None, 0)
    return guard


@pytest.mark.parametrize("threads", [256, 100_000])
@pytest.mark.parametrize("budget", [64 * MiB, 12 * MiB, 1 * MiB, 64 * 1024])
def test_read_buffers_take_a_bounded_share_and_the_warm_progresses(
    model: Path, budget: int, threads: int
) -> None:
    evict_path(model)
    options = PrewarmOptions(strategy=Strategy.READ, threads=threads, chunk_bytes=4 * MiB)
    result = prewarm(discover(model), options, guard=_guard(budget))
    assert not result.failed, result.failure_reason
    assert result.partial and "memory budget reached" in (result.partial_reason or "")
    share = budget // BUFFER_BUDGET_DIVISOR
    assert 1 <= result.threads <= max(1, share // PAGE)
    # Everything but the buffers' share went to the page cache (whole pages).
    assert budget - share - PAGE <= result.read_bytes <= budget
    assert result.after.cached_bytes is not None and result.after.cached_bytes > 0


@pytest.mark.parametrize("strategy", [Strategy.READ, Strategy.POPULATE])
@pytest.mark.parametrize("budget", [0, 100], ids=["no-budget", "less-than-a-page"])
def test_no_budget_at_all_is_a_failure_with_the_reason(
    model: Path, strategy: Strategy, budget: int
) -> None:
    evict_path(model)
    options = PrewarmOptions(strategy=strategy, threads=8)
    result = prewarm(discover(model), options, guard=_guard(budget))
    assert result.failed and not result.partial
    assert result.read_bytes == 0
    assert (result.failure_reason or "").startswith("no memory budget to warm anything")
    assert result.to_dict()["failed"] is True


def _in_cgroup(join: str, *args: str, env: dict[str, str]) -> list[str]:
    """pagewarm with ``args`` and ``env``, started inside the cgroup that ``join`` enters."""
    return [
        "sh",
        "-c",
        join,
        "sh",
        "env",
        *[f"{k}={v}" for k, v in env.items()],
        sys.executable,
        "-m",
        "controller.cli",
        *args,
    ]


def test_256_threads_in_a_small_cgroup_warm_within_the_budget(model: Path) -> None:
    """PAGEWARM_PREWARM_THREADS=256 (valid) in a 192 MiB cgroup: before, 185 threads held
    the whole budget in buffers, 0 B read, PARTIAL, exit 0."""
    evict_path(model)
    env = {"PAGEWARM_PREWARM_THREADS": "256", "PAGEWARM_PREWARM_STRATEGY": "read"}
    with memory_cgroup(192 * MiB) as cgroup:
        argv = _in_cgroup(
            cgroup.join_command(), "prewarm", str(model), "--reserve", "16MiB", "--json", env=env
        )
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, cwd=REPO, check=False
        )
        assert cgroup.oom_kills() == 0
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["partial"] is True and doc["failed"] is False
    assert cgroup.limit_reason in doc["partial_reason"]
    assert 1 <= doc["threads"] < 256
    budget = doc["budget_bytes"]
    assert budget - budget // BUFFER_BUDGET_DIVISOR - PAGE <= doc["read_bytes"] <= budget


@pytest.mark.parametrize("how", ["env", "flag"])
def test_no_budget_in_a_cgroup_fails_with_exit_1_and_the_reason(model: Path, how: str) -> None:
    """A reserve larger than the cgroup's headroom leaves no budget: exit 1, the reason."""
    evict_path(model)
    env = {"PAGEWARM_PREWARM_RESERVE_BYTES": str(256 * MiB)} if how == "env" else {}
    flags = ["--reserve", "256MiB"] if how == "flag" else []
    with memory_cgroup(192 * MiB) as cgroup:
        argv = _in_cgroup(cgroup.join_command(), "prewarm", str(model), *flags, "--json", env=env)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, cwd=REPO, check=False
        )
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["failed"] is True and doc["partial"] is False
    assert doc["budget_bytes"] == 0 and doc["read_bytes"] == 0
    assert doc["failure_reason"].startswith("no memory budget to warm anything")
    assert cgroup.limit_reason in doc["failure_reason"]
    assert "pre-warm failed" in done.stderr


@pytest.mark.parametrize("strategy", [Strategy.READ, Strategy.POPULATE])
def test_no_more_threads_than_chunks(model: Path, strategy: Strategy) -> None:
    """--threads 100000 started 5,692 threads for a 252 MiB model: one per chunk is the most
    that can work."""
    options = PrewarmOptions(strategy=strategy, threads=100_000, chunk_bytes=16 * MiB)
    result = prewarm(discover(model), options, guard=MemoryGuard(enabled=False))
    assert result.threads == 4 * 64 // 16
    assert not result.failed and not result.partial
