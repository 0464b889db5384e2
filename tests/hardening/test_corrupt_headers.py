"""Corrupt safetensors files and the wrong loader for the files: `measure` and `bench`
refuse them before anything is timed, with one line that names the file and what is wrong
(exit 2, no traceback, no failed sample recorded). Real files, the real command line."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from controller.loaderror import LoaderError
from controller.safetensors_header import read_header
from exporter.errors import UserError
from exporter.residency import ResidencyProbe
from tests.support import evict_path, pagewarm

TENSOR = {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}


def _file(header: bytes, data: bytes = b"\0" * 8) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _json(document: object, data: bytes = b"\0" * 8) -> bytes:
    return _file(json.dumps(document).encode(), data)


CORRUPT = {
    "3-bytes": (b"abc", "3 bytes, fewer than the 8-byte header length"),
    "length-2^63": (struct.pack("<Q", 1 << 63) + b"{}", "header length 9223372036854775808"),
    "length-past-eof": (struct.pack("<Q", 4096) + b"{}", "is past the end of the file"),
    "header-is-a-list": (_file(b"[1, 2, 3]"), "a JSON list, not an object of tensors"),
    "header-is-a-string": (_file(b'"weights"'), "a JSON str, not an object of tensors"),
    "garbage-json": (_file(b"{not json"), "not JSON (Expecting property name"),
    "non-utf8": (_file(b'{"w\xff\xfe": 1}'), "not UTF-8 (byte 3)"),
    "deeply-nested": (_file(b"[" * 100_000 + b"]" * 100_000), "JSON nested too deeply"),
    "no-data_offsets": (_json({"w": {"dtype": "BF16", "shape": [4]}}), "has no data_offsets"),
    "tensor-is-a-number": (_json({"w": 7}), "tensor 'w' is a JSON int, not an object"),
    "offsets-not-a-pair": (
        _json({"w": {**TENSOR, "data_offsets": [0]}}),
        "has data_offsets [0], not [begin, end]",
    ),
    "negative-offsets": (
        _json({"w": {**TENSOR, "data_offsets": [-8, 0]}}),
        "has data_offsets [-8, 0]",
    ),
    "reversed-offsets": (
        _json({"w": {**TENSOR, "data_offsets": [8, 0]}}),
        "ends before it begins",
    ),
    "offsets-past-eof": (
        _json({"w": {"dtype": "BF16", "shape": [4096], "data_offsets": [0, 8192]}}),
        "past the end of the file (8 bytes of data)",
    ),
    "shape-mismatch": (
        _json({"w": {**TENSOR, "shape": [3]}}),
        "holds 8 bytes; BF16 of shape [3] needs 6",
    ),
    "overlap": (
        _json({"a": TENSOR, "b": {**TENSOR, "data_offsets": [4, 12]}}, b"\0" * 12),
        "overlaps the one before",
    ),
    "gap": (_json({"w": {**TENSOR, "data_offsets": [8, 16]}}, b"\0" * 16), "leaves a gap"),
    "trailing-data": (_json({"w": TENSOR}, b"\0" * 16), "8 bytes of data after the last"),
    "bad-metadata": (_json({"__metadata__": {"n": 1}, "w": TENSOR}), "__metadata__ is not"),
}


@pytest.fixture(params=sorted(CORRUPT))
def corrupt_model(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, str]:
    raw, reason = CORRUPT[request.param]
    model = tmp_path / "model"
    model.mkdir()
    shard = model / "model.safetensors"
    shard.write_bytes(raw)
    return model, shard, reason


def test_the_parser_raises_one_loader_error_naming_the_file(
    corrupt_model: tuple[Path, Path, str],
) -> None:
    _, shard, reason = corrupt_model
    with pytest.raises(LoaderError) as caught:
        read_header(shard)
    assert isinstance(caught.value, UserError)
    assert str(caught.value).startswith(f"{shard}: ")
    assert reason in str(caught.value)


@pytest.mark.parametrize("command", ["measure", "bench"])
def test_measure_and_bench_refuse_a_corrupt_file_before_the_load(
    corrupt_model: tuple[Path, Path, str], tmp_path: Path, command: str
) -> None:
    model, shard, reason = corrupt_model
    store = tmp_path / "samples.jsonl"
    args = ["--runs", "1", "--modes", "cold"] if command == "bench" else []
    done = pagewarm(command, model, *args, env={"PAGEWARM_SAMPLES": str(store)})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    event = json.loads(line)["event"]
    assert event.startswith(f"{shard}: ") and reason in event
    assert not store.exists()  # no failed sample: nothing was measured


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.gguf"])
@pytest.mark.parametrize("command", ["measure", "bench"])
def test_the_wrong_loader_for_the_files_is_refused_and_records_nothing(
    tmp_path: Path, name: str, command: str
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / name).write_bytes(os.urandom(4096))
    store = tmp_path / "samples.jsonl"
    args = ["--runs", "1", "--modes", "cold"] if command == "bench" else []
    done = pagewarm(command, model, *args, env={"PAGEWARM_SAMPLES": str(store)})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{model / name} is not one" in done.stderr
    assert not store.exists()


def test_an_empty_file_is_not_a_safetensors_file(tmp_path: Path) -> None:
    """(The commands refuse an all-empty weight set before: see the weight set's tests.)"""
    shard = tmp_path / "model.safetensors"
    shard.write_bytes(b"")
    with pytest.raises(LoaderError, match="0 bytes, fewer than the 8-byte header length"):
        read_header(shard)


def test_checking_a_header_leaves_a_cold_file_cold(small_model: Path) -> None:
    shard = sorted(small_model.glob("*.safetensors"))[0]
    evict_path(shard)
    header = read_header(shard)
    assert header.data_bytes > 0
    fd = os.open(shard, os.O_RDONLY)
    try:
        assert ResidencyProbe().cached_bytes(fd, 0, shard.stat().st_size) == 0
    finally:
        os.close(fd)
