"""A shard that changes before its turn in a warm (truncated, grown, rewritten in place,
replaced) is warmed as it is now, named and counted in the result, and the result's size
and residency are those of the files on disk: a real, rate-limited warm in another
process, paused on an event (the first shard becoming resident), a real change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.support import REPO, evict_path, write_random

MiB = 1 << 20
SHARD = 8 * MiB


def _truncate(path: Path) -> int:
    os.truncate(path, 1 * MiB)
    return 1 * MiB


def _grow(path: Path) -> int:
    with path.open("ab") as handle:
        handle.write(os.urandom(4 * MiB))
    return SHARD + 4 * MiB


def _rewrite_in_place(path: Path) -> int:
    with path.open("r+b") as handle:
        handle.write(os.urandom(4096))
    stat = path.stat()
    # The same size; a later modification time even on a coarse clock.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    return SHARD


def _replace(path: Path) -> int:
    write_random(path.with_suffix(".new"), 2 * MiB).rename(path)
    return 2 * MiB


def _wait_resident(path: Path, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fd = os.open(path, os.O_RDONLY)
        try:
            if (ResidencyProbe().cached_bytes(fd, 0, SHARD) or 0) >= at_least:
                return
        finally:
            os.close(fd)
        time.sleep(0.02)
    raise AssertionError(f"{path} never became {at_least} bytes resident")


WARM_FLAGS = ("--threads", "1", "--rate-limit", "4MiB", "--chunk", "4MiB", "--strategy", "read")


def _three_shards(model: Path) -> list[Path]:
    shards = [write_random(model / f"model-{n:05d}-of-00003.safetensors", SHARD) for n in (1, 2, 3)]
    evict_path(model)
    return shards


def _change_the_last_shard_mid_warm(
    shards: list[Path], change: Callable[[Path], int], *args: str, env: dict[str, str]
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Runs pagewarm ``args`` (a warm at 4 MiB/s, one thread: the last shard's turn comes
    about 4 s after the start), changes the last shard once the first is being warmed;
    (the last shard's new size, the finished process)."""
    argv = [sys.executable, "-m", "controller.cli", *args]
    full_env = {**os.environ, "PAGEWARM_LOG_FORMAT": "json", **env}
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=REPO
    )
    _wait_resident(shards[0], 1 * MiB)
    new_size = change(shards[-1])
    out, err = process.communicate(timeout=120)
    return new_size, subprocess.CompletedProcess(argv, process.returncode, out, err)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (_truncate, "truncated"),
        (_grow, "grown"),
        (_rewrite_in_place, "modified"),
        (_replace, "replaced"),
    ],
    ids=["truncated", "grown", "rewritten-in-place", "replaced"],
)
def test_a_shard_changed_before_its_turn_is_named_and_warmed_as_it_is(
    tmp_path: Path, change: Callable[[Path], int], name: str
) -> None:
    shards = _three_shards(tmp_path)
    new_size, done = _change_the_last_shard_mid_warm(
        shards, change, "prewarm", str(tmp_path), "--json", *WARM_FLAGS, env={}
    )
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["file_errors"] == []
    assert doc["changed_files"] == [
        {"path": str(shards[2]), "change": name, "planned_size": SHARD, "size": new_size}
    ]
    assert doc["size_bytes"] == 2 * SHARD + new_size
    assert doc["size_bytes"] == sum(f.size for f in discover(tmp_path).files)
    # The changed shard was warmed at its new size, and the ratio is over that size.
    last = ResidencyProbe().measure(discover(tmp_path)).files[-1]
    assert last.size == new_size
    assert last.ratio is not None and last.ratio >= 0.95
    assert doc["resident_after_ratio"] >= 0.95
    assert "file changed before its turn" in done.stderr


def test_measure_records_the_sizes_the_warm_and_the_load_found(tmp_path: Path) -> None:
    """The siblings in the samples: a shard truncated before its turn in `measure
    --prewarm` gives both samples the size on disk, not the size listed at the start."""
    model = tmp_path / "model"
    shards = _three_shards(model)
    store = tmp_path / "samples.jsonl"
    new_size, done = _change_the_last_shard_mid_warm(
        shards, _truncate, "measure", str(model), "--prewarm", *WARM_FLAGS, "--", "true",
        env={"PAGEWARM_SAMPLES": str(store)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    prewarm_sample, load_sample = (json.loads(line) for line in store.read_text().splitlines())
    assert prewarm_sample["kind"] == "prewarm" and load_sample["kind"] == "load"
    assert prewarm_sample["model_bytes"] == load_sample["model_bytes"] == 2 * SHARD + new_size
    assert f"{shards[2]}: truncated since the weight set was found" in prewarm_sample["error"]
