"""Built-in model loaders: read every tensor of a weight set the way a serving engine does,
so that the time measured is the time the storage and the page cache give a real load.

- ``safetensors``: the safetensors library into numpy arrays. numpy has no bfloat16 (the
  dtype of most checkpoints and of ``pagewarm synth``): ``ml_dtypes`` registers it, and
  safetensors then hands out real bf16 arrays instead of failing.
- ``torch``: safetensors into torch tensors on the CPU, copied into freshly allocated
  tensors as an engine copies checkpoint tensors into its parameters. safetensors maps the
  file and hands out tensors over the mapping, which fault in lazily: without the copy most
  bytes would never be read and the figure would flatter the storage.
- ``torch-cuda``: the same, then moved to the GPU and kept there until the load ends
  (synchronised, so the time includes the transfer), as an engine fills its weights.

Honesty check: every loader counts the bytes it materialised and compares them with the
data sizes in the safetensors headers; a mismatch fails the load. Metadata files of the
weight set (config.json, the index) are read whole, as engines read them. Bytes are not
kept past the load on the CPU (each tensor is dropped after its copy): a 16 GiB model must
not need 16 GiB of RAM on top of the page cache to be measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Protocol

from controller.loaderror import LoaderError
from controller.safetensors_header import read_header
from exporter.weightset import SAFETENSORS_PATTERN, FileRole, WeightSet

METADATA_READ_BYTES = 1 << 20

__all__ = ["LoaderError"]


@dataclass(frozen=True, slots=True)
class LoadResult:
    loader: str
    seconds: float
    tensors: int
    tensor_bytes: int  # bytes of tensor data materialised
    metadata_bytes: int  # bytes of config/index files read
    device: str  # where the tensors went: cpu, cuda:0


ProgressCallback = Callable[[int], None]  # bytes of tensor data loaded so far


class Loader(Protocol):
    name: str

    def check(self) -> None:
        """Raise LoaderError when this loader cannot run here (before any timing)."""

    def check_files(self, weight_set: WeightSet) -> None:
        """Raise LoaderError when this loader cannot load these files (before any timing,
        leaving their pages as they were)."""

    def load(
        self, weight_set: WeightSet, on_progress: ProgressCallback | None = None
    ) -> LoadResult:
        """Load every tensor; blocking."""


def safetensors_data_bytes(path: Path, *, as_found: bool = True) -> int:
    """The tensor-data bytes a safetensors file holds, from its (checked) header."""
    return read_header(path, as_found=as_found).data_bytes


def _read_metadata(weight_set: WeightSet) -> int:
    total = 0
    buffer = bytearray(METADATA_READ_BYTES)
    for f in weight_set.files:
        if f.role is not FileRole.METADATA:
            continue
        with f.path.open("rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                total += n
    return total


def _safetensors_files(weight_set: WeightSet) -> list[Path]:
    files = [f.path for f in weight_set.weight_files]
    others = [p for p in files if not fnmatchcase(p.name, SAFETENSORS_PATTERN)]
    if others:
        raise LoaderError(
            f"the safetensors loaders read .safetensors files only; {others[0]} is not one "
            "(time another loader with --url or -- COMMAND)"
        )
    if not files:
        raise LoaderError(f"no .safetensors files under {weight_set.root}")
    return files


class _SafetensorsLoader:
    """The shared walk: metadata, then each shard's tensors in file order."""

    name = "safetensors"
    framework = "numpy"

    def check(self) -> None:
        try:
            import safetensors  # noqa: F401, PLC0415 - the 'bench' extra
        except ImportError as exc:
            raise LoaderError(
                f"the {self.name} loader needs the 'bench' extra ({exc.name} is missing): "
                "pip install 'pagewarm[bench]'"
            ) from None

    def check_files(self, weight_set: WeightSet) -> None:
        for path in _safetensors_files(weight_set):
            read_header(path)

    def device(self) -> str:
        return "cpu"

    def materialise(self, tensor: Any) -> tuple[int, Any]:
        """(bytes, what to keep until the load ends)."""
        return int(tensor.nbytes), None

    def finish(self, kept: list[Any]) -> None:
        """Wait for asynchronous copies to end (GPU loaders): part of the load's time."""

    def release(self, kept: list[Any]) -> None:
        """Free what the load kept (after the clock stopped)."""
        kept.clear()

    def load(
        self, weight_set: WeightSet, on_progress: ProgressCallback | None = None
    ) -> LoadResult:
        from safetensors import SafetensorError, safe_open  # noqa: PLC0415 - the 'bench' extra

        self.check()
        files = _safetensors_files(weight_set)
        started = time.perf_counter()
        metadata_bytes = _read_metadata(weight_set)
        tensors = loaded = 0
        kept: list[Any] = []
        for path in files:
            expected = safetensors_data_bytes(path, as_found=False)
            in_file = 0
            try:
                with safe_open(path, framework=self.framework, device="cpu") as handle:
                    for key in handle.keys():  # noqa: SIM118 - safe_open is no dict
                        nbytes, keep = self.materialise(handle.get_tensor(key))
                        if keep is not None:
                            kept.append(keep)
                        in_file += nbytes
                        tensors += 1
                        if on_progress is not None:
                            on_progress(loaded + in_file)
            except SafetensorError as exc:  # the file changed since its header was checked
                raise LoaderError(f"{path}: {exc}") from None
            if in_file != expected:
                raise LoaderError(
                    f"{path}: loaded {in_file} bytes of tensor data, the header says {expected}"
                )
            loaded += in_file
        self.finish(kept)
        seconds = time.perf_counter() - started
        self.release(kept)
        return LoadResult(self.name, seconds, tensors, loaded, metadata_bytes, self.device())


class NumpyLoader(_SafetensorsLoader):
    """safetensors -> numpy (with ml_dtypes' bfloat16); safetensors copies each tensor out
    of the file into the array it returns, so every byte is read."""

    name = "safetensors"
    framework = "numpy"

    def check(self) -> None:
        super().check()
        try:
            import ml_dtypes  # noqa: F401, PLC0415 - registering bfloat16 is the side effect
        except ImportError:
            raise LoaderError(
                "the safetensors loader needs ml_dtypes for bfloat16 (the 'bench' extra): "
                "pip install 'pagewarm[bench]'"
            ) from None


class TorchLoader(_SafetensorsLoader):
    name = "torch"
    framework = "pt"

    def check(self) -> None:
        super().check()
        try:
            import torch  # noqa: F401, PLC0415 - optional: only where torch is installed
        except ImportError:
            raise LoaderError(
                f"the {self.name} loader needs torch (not installed here); use --loader safetensors"
            ) from None

    def materialise(self, tensor: Any) -> tuple[int, Any]:
        # An engine copies checkpoint tensors into its parameters; the copy is what reads
        # the mapped file. clone() allocates and copies every byte.
        copy = tensor.clone()
        return int(copy.nbytes), None


class TorchDeviceLoader(TorchLoader):
    """Tensors moved to a device (a GPU) and kept there until the load ends."""

    def __init__(self, device: str) -> None:
        self._device = device
        self.name = f"torch-{device.split(':', maxsplit=1)[0]}"

    def device(self) -> str:
        return self._device

    def materialise(self, tensor: Any) -> tuple[int, Any]:
        moved = tensor.to(self._device, non_blocking=False)
        return int(moved.nbytes), moved

    def finish(self, kept: list[Any]) -> None:
        import torch  # noqa: PLC0415

        if self._device.startswith("cuda"):
            torch.cuda.synchronize(self._device)  # the transfer is part of the load

    def release(self, kept: list[Any]) -> None:
        import torch  # noqa: PLC0415

        kept.clear()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()


class TorchCudaLoader(TorchDeviceLoader):
    def __init__(self) -> None:
        super().__init__("cuda:0")

    def check(self) -> None:
        super().check()
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            raise LoaderError("the torch-cuda loader needs a CUDA GPU; none is visible here")
        # Creating the CUDA context takes seconds and happens once per process, not once
        # per load: do it here, before anything is timed.
        torch.zeros(1, device=self._device)
        torch.cuda.synchronize(self._device)


LOADERS: dict[str, Callable[[], Loader]] = {
    "safetensors": NumpyLoader,
    "torch": TorchLoader,
    "torch-cuda": TorchCudaLoader,
}


def get_loader(name: str) -> Loader:
    try:
        factory = LOADERS[name]
    except KeyError:
        raise LoaderError(f"unknown loader {name!r} (one of {', '.join(LOADERS)})") from None
    return factory()
