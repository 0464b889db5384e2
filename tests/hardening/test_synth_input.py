"""pagewarm synth never overwrites what it did not write (a non-empty directory needs
--force) and honours --size: within SIZE_TOLERANCE below it, or refused with the reason
and nothing written. Real files, the real command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.safetensors_header import read_header
from controller.synth import SIZE_TOLERANCE, llama_shape
from tests.support import pagewarm

MiB = 1 << 20
GiB = 1 << 30
SMALLEST = 6_949_888  # one layer of hidden size 512, vocabulary 256


@pytest.mark.parametrize("size", [SMALLEST, 7 * MiB, 8 * MiB, 16 * MiB, 24 * MiB, 64 * MiB])
def test_the_size_written_is_the_size_asked_within_the_tolerance(tmp_path: Path, size: int) -> None:
    model = tmp_path / "m"
    done = pagewarm("synth", model, "--size", str(size), "--shards", "2", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert size * (1 - SIZE_TOLERANCE) <= doc["total_bytes"] <= size
    shards = sorted(model.glob("*.safetensors"))
    assert [str(s) for s in shards] == doc["files"]
    # What the (strictly checked) headers declare is what is there: the bytes asked for.
    assert sum(read_header(s).data_bytes for s in shards) == doc["total_bytes"]
    assert sum(s.stat().st_size for s in shards) >= doc["total_bytes"]


@pytest.mark.parametrize("size", [256 * MiB, 1 * GiB, 16 * GiB, 70 * GiB, 405 * GiB])
def test_large_shapes_are_within_the_tolerance(size: int) -> None:
    shape = llama_shape(size)
    total = sum(t.nbytes for t in shape.tensors())
    assert size * (1 - SIZE_TOLERANCE) <= total <= size
    assert shape.layers >= 16 and shape.vocab >= 256


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ("1MiB", f"below the smallest synthetic model, {SMALLEST} bytes"),
        ("4MiB", f"below the smallest synthetic model, {SMALLEST} bytes"),
        (str(SMALLEST - 1), f"below the smallest synthetic model, {SMALLEST} bytes"),
        ("1024TiB", "does not fit"),
    ],
)
def test_a_size_it_cannot_make_is_refused_and_nothing_is_written(
    tmp_path: Path, size: str, reason: str
) -> None:
    model = tmp_path / "m"
    done = pagewarm("synth", model, "--size", size)
    assert done.returncode == 2
    assert reason in done.stderr
    assert "Traceback" not in done.stderr
    assert not model.exists() or not any(model.iterdir())


def _config(model: Path) -> None:
    (model / "config.json").write_text('{"mine": true}\n')


def _shard(model: Path) -> None:
    (model / "model-00001-of-00002.safetensors").write_bytes(b"my weights")


def _unrelated(model: Path) -> None:
    (model / "README.md").write_text("my model\n")


def _hidden(model: Path) -> None:
    (model / ".gitattributes").write_text("*.safetensors filter=lfs\n")


def _subdirectory(model: Path) -> None:
    (model / "original").mkdir()


@pytest.mark.parametrize("fill", [_config, _shard, _unrelated, _hidden, _subdirectory])
def test_a_non_empty_directory_is_refused_unless_forced(
    tmp_path: Path, fill: Callable[[Path], None]
) -> None:
    model = tmp_path / "m"
    model.mkdir()
    fill(model)
    before = {p.name: p.read_bytes() if p.is_file() else None for p in model.iterdir()}
    done = pagewarm("synth", model, "--size", "8MiB", "--shards", "2")
    assert done.returncode == 2
    assert f"{model} is not empty" in done.stderr and "--force" in done.stderr
    after = {p.name: p.read_bytes() if p.is_file() else None for p in model.iterdir()}
    assert after == before  # nothing overwritten, nothing added
    forced = pagewarm("synth", model, "--size", "8MiB", "--shards", "2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert len(list(model.glob("model-*-of-00002.safetensors"))) == 2


def test_an_empty_directory_is_written(tmp_path: Path) -> None:
    done = pagewarm("synth", tmp_path, "--size", "8MiB", "--shards", "2")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "config.json").exists()


@pytest.mark.parametrize("flag", ["--threads", "--shards"])
def test_zero_writers_or_shards_are_refused(tmp_path: Path, flag: str) -> None:
    done = pagewarm("synth", tmp_path / "m", "--size", "8MiB", flag, "0")
    assert done.returncode == 2
    assert "must be at least 1" in done.stderr
    assert not (tmp_path / "m").exists()
