"""The synthetic model is a valid safetensors checkpoint with a consistent index."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors import safe_open

from controller.synth import llama_shape, split_shards, synth


def test_synthetic_model_is_valid_safetensors_with_a_consistent_index(tmp_path: Path) -> None:
    result = synth(tmp_path / "m", 24 << 20, shards=3)
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert len(result.files) == 3
    seen: dict[str, str] = {}
    for shard in result.files:
        raw = shard.read_bytes()
        (header_len,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_len])
        header.pop("__metadata__")
        data_len = max(t["data_offsets"][1] for t in header.values())
        assert len(raw) == 8 + header_len + data_len
        with safe_open(shard, framework="numpy") as f:
            assert set(f.keys()) == set(header)
        for name in header:
            seen[name] = shard.name
        # random, not zeros
        assert np.frombuffer(raw[8 + header_len :], dtype=np.uint8)[:4096].std() > 50
    assert seen == index["weight_map"]
    assert index["metadata"]["total_size"] == result.total_bytes
    assert config["num_hidden_layers"] == result.shape.layers
    assert f"model.layers.{result.shape.layers - 1}.mlp.down_proj.weight" in seen


def test_shapes_and_shards_scale_with_the_size() -> None:
    assert llama_shape(16 << 30).hidden == 4096
    assert llama_shape(64 << 20).hidden <= 1024
    tensors = llama_shape(1 << 30).tensors()
    groups = split_shards(tensors, 8)
    assert len(groups) == 8
    assert [t for g in groups for t in g] == tensors
    assert all(groups)
