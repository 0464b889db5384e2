"""The built-in loaders on a real synthetic model, from a really evicted page cache:
every byte is read (residency goes from 0 to 100%), bf16 arrives as bf16."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from controller.loaders import (
    LoaderError,
    NumpyLoader,
    TorchDeviceLoader,
    get_loader,
    safetensors_data_bytes,
)
from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.support import evict_path, write_random

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAVE_TORCH, reason="torch not installed (make test installs the CPU build where it can)"
)


def _tensor_bytes(model: Path) -> int:
    return sum(safetensors_data_bytes(p) for p in model.glob("*.safetensors"))


def _load_from_cold(loader_name: str, model: Path) -> None:
    ws = discover(model)
    probe = ResidencyProbe()
    evict_path(model)
    before = probe.measure(ws).ratio
    assert before is not None and before <= 0.05
    loader = get_loader(loader_name)
    loader.check()
    result = loader.load(ws)
    assert result.tensor_bytes == _tensor_bytes(model)
    assert result.tensors == sum(1 for _ in _tensor_names(model))
    assert result.metadata_bytes == sum(p.stat().st_size for p in model.glob("*.json"))
    # Every page of every file was read: a lazy loader would leave most of them out. Not
    # exactly 1.0: these VMs' DAMON pageout reclaims a few fresh pages.
    after = probe.measure(ws).ratio
    assert after is not None and after >= 0.95


def _tensor_names(model: Path) -> list[str]:
    from safetensors import safe_open  # noqa: PLC0415

    names = []
    for shard in sorted(model.glob("*.safetensors")):
        with safe_open(shard, framework="numpy") as handle:
            names += list(handle.keys())
    return names


def test_safetensors_loader_reads_every_byte_from_cold(small_model: Path) -> None:
    _load_from_cold("safetensors", small_model)


def test_numpy_loader_hands_out_real_bfloat16(small_model: Path) -> None:
    import ml_dtypes  # noqa: PLC0415
    from safetensors import safe_open  # noqa: PLC0415

    NumpyLoader().check()  # registers bfloat16 with numpy
    shard = sorted(small_model.glob("*.safetensors"))[0]
    with safe_open(shard, framework="numpy") as handle:
        tensor = handle.get_tensor(next(iter(handle.keys())))
    assert tensor.dtype == ml_dtypes.bfloat16
    assert tensor.view("uint16").any()  # synth writes random data, never zeros


def test_loader_refuses_other_formats_and_unknown_names(tmp_path: Path) -> None:
    write_random(tmp_path / "model.bin", 4096)
    with pytest.raises(LoaderError, match="safetensors files only"):
        get_loader("safetensors").load(discover(tmp_path))
    with pytest.raises(LoaderError, match="unknown loader"):
        get_loader("tensorflow")


def test_a_truncated_shard_fails_the_load(small_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    shard = sorted(small_model.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    (broken / shard.name).write_bytes(data[: len(data) // 2])
    with pytest.raises(LoaderError, match="past the end of the file") as caught:
        get_loader("safetensors").load(discover(broken))
    assert str(caught.value).startswith(f"{broken / shard.name}: ")


@needs_torch
def test_torch_loader_copies_every_byte_from_cold(small_model: Path) -> None:
    # safetensors maps the file for torch: without the copy most pages would stay unread.
    _load_from_cold("torch", small_model)


@needs_torch
def test_torch_device_loader_keeps_tensors_until_the_load_ends(small_model: Path) -> None:
    # The GPU path (move, keep, synchronise, release), on the CPU device.
    ws = discover(small_model)
    evict_path(small_model)
    result = TorchDeviceLoader("cpu").load(ws)
    assert result.device == "cpu"
    assert result.tensor_bytes == _tensor_bytes(small_model)
    ratio = ResidencyProbe().measure(ws).ratio
    assert ratio is not None and ratio >= 0.95


@needs_torch
def test_torch_cuda_loader_says_clearly_when_there_is_no_gpu() -> None:
    import torch  # noqa: PLC0415

    loader = get_loader("torch-cuda")
    if torch.cuda.is_available():
        loader.check()
        return
    with pytest.raises(LoaderError, match="needs a CUDA GPU"):
        loader.check()
