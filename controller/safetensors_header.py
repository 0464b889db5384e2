"""The header of a safetensors file, read and checked in one place.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object: tensor
name -> {dtype, shape, data_offsets: [begin, end]}, plus an optional ``__metadata__`` of
strings), then the tensor data; offsets count from the end of the header, and the tensors
cover the data exactly. Every way a file can break that (too short, a length of 2^63, not
UTF-8, not JSON, a JSON list, a tensor without offsets, offsets past the end of the file)
is one ``LoaderError`` that names the file and what is wrong, never a traceback.

Reading a header must not warm the model it checks (a cold load is measured after it):
readahead is off for the read, and pages that were not resident before are dropped after.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.loaderror import LoaderError
from exporter.residency import ResidencyProbe

LENGTH_BYTES = 8
# The safetensors library refuses larger headers; a length past it is a corrupt file.
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # from the start of the data (after the header)
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    path: Path
    header_bytes: int
    tensors: tuple[TensorEntry, ...]

    @property
    def data_start(self) -> int:
        return LENGTH_BYTES + self.header_bytes

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def read_header(path: Path, *, as_found: bool = True) -> SafetensorsHeader:
    """The checked header of ``path``; LoaderError naming the file otherwise. ``as_found``:
    leave the page cache as it was (a check before a load); a load itself reads as it
    reads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LoaderError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        size = os.fstat(fd).st_size
        header_bytes, raw = _read_raw(path, fd, size, as_found=as_found)
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    tensors = _tensors(path, _decode(path, raw))
    header = SafetensorsHeader(path, header_bytes, tensors)
    _check_coverage(header, size)
    return header


def _read_raw(path: Path, fd: int, size: int, *, as_found: bool) -> tuple[int, bytes]:
    if size < LENGTH_BYTES:
        raise LoaderError(
            f"{path}: not a safetensors file: {size} bytes, fewer than the "
            f"{LENGTH_BYTES}-byte header length"
        )
    resident_before = _resident(fd, size) if as_found else None
    if as_found:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead past what is read
    try:
        (length,) = struct.unpack("<Q", os.pread(fd, LENGTH_BYTES, 0))
        if length > size - LENGTH_BYTES or length > MAX_HEADER_BYTES:
            where = "past the end of the file" if length > size - LENGTH_BYTES else "too large"
            raise LoaderError(
                f"{path}: not a safetensors file: header length {length} bytes is {where} "
                f"({size} bytes; the limit is {MAX_HEADER_BYTES})"
            )
        raw = os.pread(fd, length, LENGTH_BYTES)
    finally:
        if resident_before == 0:  # leave the page cache as it was: a cold file stays cold
            os.posix_fadvise(fd, 0, LENGTH_BYTES + MAX_HEADER_BYTES, os.POSIX_FADV_DONTNEED)
    if len(raw) != length:
        raise LoaderError(f"{path}: the file shrank while its header was read")
    return length, raw


def _resident(fd: int, size: int) -> int | None:
    return ResidencyProbe().cached_bytes(fd, 0, min(size, LENGTH_BYTES + MAX_HEADER_BYTES))


def _decode(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LoaderError(
            f"{path}: corrupt safetensors header: not UTF-8 (byte {exc.start})"
        ) from None
    except json.JSONDecodeError as exc:
        raise LoaderError(
            f"{path}: corrupt safetensors header: not JSON ({exc.msg} at byte {exc.pos})"
        ) from None
    except RecursionError:
        raise LoaderError(f"{path}: corrupt safetensors header: JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise LoaderError(
            f"{path}: corrupt safetensors header: a JSON {type(document).__name__}, "
            "not an object of tensors"
        )
    return document


def _tensors(path: Path, document: dict[str, Any]) -> tuple[TensorEntry, ...]:
    tensors = []
    for name, entry in document.items():
        if name == METADATA_KEY:
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise LoaderError(
                    f"{path}: corrupt safetensors header: {METADATA_KEY} is not "
                    "an object of strings"
                )
            continue
        tensors.append(_tensor(path, name, entry))
    return tuple(sorted(tensors, key=lambda t: (t.begin, t.end)))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor(path: Path, name: str, entry: object) -> TensorEntry:
    def wrong(what: str) -> LoaderError:
        return LoaderError(f"{path}: corrupt safetensors header: tensor {name!r} {what}")

    if not isinstance(entry, dict):
        raise wrong(f"is a JSON {type(entry).__name__}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if offsets is None:
        raise wrong("has no data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise wrong(f"has data_offsets {offsets!r}, not [begin, end] byte offsets")
    if offsets[0] > offsets[1]:
        raise wrong(f"ends before it begins: data_offsets {offsets}")
    if not isinstance(dtype, str):
        raise wrong(f"has dtype {dtype!r}, not a name")
    if not (isinstance(shape, list) and all(map(_is_count, shape))):
        raise wrong(f"has shape {shape!r}, not a list of sizes")
    tensor = TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])
    if dtype in DTYPE_BYTES:
        elements = 1
        for dim in shape:
            elements *= dim
        if elements * DTYPE_BYTES[dtype] != tensor.nbytes:
            raise wrong(
                f"holds {tensor.nbytes} bytes; {dtype} of shape {list(shape)} needs "
                f"{elements * DTYPE_BYTES[dtype]}"
            )
    return tensor


def _check_coverage(header: SafetensorsHeader, size: int) -> None:
    """Tensors cover the data exactly: no gap, no overlap, nothing past the end."""
    data = size - header.data_start
    expected = 0
    for tensor in header.tensors:
        if tensor.begin != expected:
            what = (
                "overlaps the one before" if tensor.begin < expected else "leaves a gap before it"
            )
            raise LoaderError(
                f"{header.path}: corrupt safetensors header: tensor {tensor.name!r} "
                f"(data_offsets [{tensor.begin}, {tensor.end}]) {what}"
            )
        expected = tensor.end
    if expected > data:
        raise LoaderError(
            f"{header.path}: truncated or corrupt: its tensors end at byte {expected} of the "
            f"data, past the end of the file ({data} bytes of data)"
        )
    if expected < data:
        raise LoaderError(
            f"{header.path}: corrupt safetensors file: {data - expected} bytes of data after "
            "the last tensor"
        )
