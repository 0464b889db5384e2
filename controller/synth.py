"""A synthetic, valid, Llama-shaped safetensors model of a chosen size, for demos, tests and
benchmarks: bf16 shards, ``model.safetensors.index.json``, ``config.json``.

The data is random (never zeros: zeros compress, deduplicate and can load faster than
real weights). Random bytes are costly on a CPU (os.urandom: ~0.5 GiB/s a core), so each
block is a random pool XORed with a fresh 64-bit key: unique per block, incompressible,
generated at memory speed by numpy on several threads.

The size is honoured: layers fill what they can, the vocabulary (embeddings and LM head)
takes the rest, so the tensor bytes come within ``SIZE_TOLERANCE`` below the size asked
for. A size below one layer of the narrowest shape is refused, as is one the filesystem
has no room for, and so is a directory that holds anything (unless forced): synth writes
``config.json`` and shards, and would overwrite a real model's.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import UserError

BLOCK_BYTES = 32 << 20
BF16_BYTES = 2
# Safetensors data starts after an 8-byte header length and the JSON header; padding the
# header to this keeps tensor data aligned for zero-copy loaders.
HEADER_ALIGN = 8
# The tensor bytes written are at most this fraction below the size asked for (never above).
SIZE_TOLERANCE = 0.001


class SynthError(UserError):
    """synth cannot write the model asked for (size, directory): nothing was written."""


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = BF16_BYTES
        for dim in self.shape:
            n *= dim
        return n


@dataclass(frozen=True, slots=True)
class LlamaShape:
    hidden: int
    intermediate: int
    vocab: int
    layers: int
    heads: int
    kv_heads: int

    def tensors(self) -> list[Tensor]:
        h, i, head_dim = self.hidden, self.intermediate, self.hidden // self.heads
        kv = self.kv_heads * head_dim
        out = [Tensor("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [
                Tensor(p + "input_layernorm.weight", (h,)),
                Tensor(p + "self_attn.q_proj.weight", (h, h)),
                Tensor(p + "self_attn.k_proj.weight", (kv, h)),
                Tensor(p + "self_attn.v_proj.weight", (kv, h)),
                Tensor(p + "self_attn.o_proj.weight", (h, h)),
                Tensor(p + "post_attention_layernorm.weight", (h,)),
                Tensor(p + "mlp.gate_proj.weight", (i, h)),
                Tensor(p + "mlp.up_proj.weight", (i, h)),
                Tensor(p + "mlp.down_proj.weight", (h, i)),
            ]
        out += [Tensor("model.norm.weight", (h,)), Tensor("lm_head.weight", (self.vocab, h))]
        return out

    def config(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "torch_dtype": "bfloat16",
            "tie_word_embeddings": False,
            "_pagewarm_synthetic": True,
        }


# (hidden, intermediate, heads, kv_heads): Llama-family widths from small to 70B.
_WIDTHS = (
    (512, 1408, 8, 8),
    (1024, 2816, 16, 8),
    (2048, 5632, 16, 8),
    (4096, 14336, 32, 8),
    (8192, 28672, 64, 8),
)


MIN_VOCAB = 256


def llama_shape(target_bytes: int, vocab: int = 32000) -> LlamaShape:
    """The widest Llama shape that still gets at least 16 layers into ``target_bytes``, its
    vocabulary grown so that its tensors come within SIZE_TOLERANCE below the target
    (within 4 x hidden bytes: one more row of the embeddings and of the LM head)."""
    for hidden, inter, heads, kv_heads in reversed(_WIDTHS):
        # Small models get a smaller vocabulary, so embeddings stay a minor part of them.
        vocab_here = min(
            vocab, max(MIN_VOCAB, target_bytes // (8 * hidden * BF16_BYTES) // 64 * 64)
        )
        shape = LlamaShape(hidden, inter, vocab_here, 1, heads, kv_heads)
        per_layer = sum(t.nbytes for t in shape.tensors()[1:10])
        layers = (target_bytes - _fixed_bytes(vocab_here, hidden)) // per_layer
        if layers >= 16 or hidden == _WIDTHS[0][0]:
            if layers < 1:  # the smallest models: the smallest vocabulary, one layer
                layers = (target_bytes - _fixed_bytes(MIN_VOCAB, hidden)) // per_layer
            if layers < 1:
                smallest = per_layer + _fixed_bytes(MIN_VOCAB, hidden)
                raise SynthError(
                    f"--size {target_bytes} is below the smallest synthetic model, "
                    f"{smallest} bytes (one Llama layer of hidden size {hidden})"
                )
            rest = target_bytes - layers * per_layer - hidden * BF16_BYTES
            filled = rest // (2 * hidden * BF16_BYTES)
            return LlamaShape(hidden, inter, filled, layers, heads, kv_heads)
    raise AssertionError("unreachable")  # pragma: no cover


def _fixed_bytes(vocab: int, hidden: int) -> int:
    """Embeddings, LM head and the final norm."""
    return (2 * vocab + 1) * hidden * BF16_BYTES


def refuse_to_overwrite(path: Path) -> None:
    """A directory that holds anything may be a model: synth writes config.json and shards."""
    if path.is_dir() and any(path.iterdir()):
        raise SynthError(
            f"{path} is not empty: synth would overwrite its config.json and shards "
            "(--force writes into it anyway)"
        )


def refuse_without_room(path: Path, size_bytes: int) -> None:
    existing = path
    while not existing.exists():
        existing = existing.parent
    fs = os.statvfs(existing)
    free = fs.f_bavail * fs.f_frsize
    if free < size_bytes:
        raise SynthError(
            f"--size {size_bytes} does not fit: {free} bytes free on the filesystem of {existing}"
        )


def split_shards(tensors: list[Tensor], shards: int) -> list[list[Tensor]]:
    """Consecutive groups of about equal bytes; never an empty shard."""
    shards = max(1, min(shards, len(tensors)))
    total = sum(t.nbytes for t in tensors)
    groups: list[list[Tensor]] = [[]]
    acc = 0
    for index, tensor in enumerate(tensors):
        left_tensors = len(tensors) - index
        left_groups = shards - len(groups)
        boundary = acc >= total * len(groups) / shards
        if groups[-1] and left_groups > 0 and (boundary or left_tensors <= left_groups):
            groups.append([])
        groups[-1].append(tensor)
        acc += tensor.nbytes
    return groups


def safetensors_header(tensors: list[Tensor]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": {"format": "pt", "generator": "pagewarm synth"}}
    offset = 0
    for t in tensors:
        entries[t.name] = {
            "dtype": "BF16",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % HEADER_ALIGN)
    return struct.pack("<Q", len(raw)) + raw


class _RandomBlocks:
    def __init__(self) -> None:
        import numpy as np  # noqa: PLC0415 - numpy is the 'bench' extra, only synth needs it

        self.np = np
        self.pool = np.frombuffer(os.urandom(BLOCK_BYTES), dtype=np.uint64)
        self.local = threading.local()

    def fill(self, nbytes: int) -> memoryview:
        out = getattr(self.local, "out", None)
        if out is None:
            out = self.local.out = self.np.empty_like(self.pool)
        key = self.np.uint64(int.from_bytes(os.urandom(8), "little"))
        words = -(-nbytes // 8)
        self.np.bitwise_xor(self.pool[:words], key, out=out[:words])
        data: memoryview = out.view(self.np.uint8).data
        return data[:nbytes]


@dataclass(frozen=True, slots=True)
class SynthResult:
    path: Path
    files: tuple[Path, ...]
    total_bytes: int
    seconds: float
    shape: LlamaShape

    @property
    def throughput_bytes_per_second(self) -> float:
        return self.total_bytes / self.seconds if self.seconds else 0.0


def synth(
    path: Path,
    size_bytes: int,
    shards: int = 4,
    *,
    threads: int = 4,
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write the model into ``path`` (created; a non-empty directory only with ``force``,
    and then its files of the same names are overwritten)."""
    started = time.perf_counter()
    if not force:
        refuse_to_overwrite(path)
    shape = llama_shape(size_bytes)
    refuse_without_room(path, sum(t.nbytes for t in shape.tensors()))
    groups = split_shards(shape.tensors(), shards)
    path.mkdir(parents=True, exist_ok=True)
    names = [f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors" for n in range(len(groups))]
    total = sum(t.nbytes for t in shape.tensors())
    blocks = _RandomBlocks()
    written = [0]
    lock = threading.Lock()

    def write_range(fd: int, offset: int, nbytes: int) -> None:
        os.pwrite(fd, blocks.fill(nbytes), offset)
        with lock:
            written[0] += nbytes
            done = written[0]
        if on_progress:
            on_progress(done, total)

    files = []
    with ThreadPoolExecutor(threads, thread_name_prefix="synth") as pool:
        for name, group in zip(names, groups, strict=True):
            header = safetensors_header(group)
            data = sum(t.nbytes for t in group)
            fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.pwrite(fd, header, 0)
                futures = [
                    pool.submit(write_range, fd, len(header) + off, min(BLOCK_BYTES, data - off))
                    for off in range(0, data, BLOCK_BYTES)
                ]
                for future in futures:
                    future.result()
                os.fsync(fd)
            finally:
                os.close(fd)
            files.append(path / name)
    weight_map = {t.name: name for name, group in zip(names, groups, strict=True) for t in group}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (path / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    return SynthResult(path, tuple(files), total, time.perf_counter() - started, shape)
