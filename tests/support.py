"""Helpers shared by the tests: real files, real syscalls, real processes."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from controller.linux.pagecache import drop
from exporter.linux.libc import libc, mapped

REPO = Path(__file__).resolve().parent.parent
NOBODY_UID = 65534
NOBODY_GID = 65534


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """CI is set to true, 1 or yes (any case): then every skip is a failure (conftest.py)."""
    return environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


IN_CI = in_ci()


def require_binary(name: str) -> str:
    """The path of a tool a test drives; skip locally when missing (a failure in CI)."""
    found = shutil.which(name) or shutil.which(name, path=str(REPO / ".tools" / "bin"))
    if found:
        return found
    pytest.skip(f"{name} not installed (make tools installs it)")


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


def on_a_block_device(path: Path) -> bool:
    """``path``'s filesystem sits on a block device (overlay, tmpfs, NFS: major 0, none)."""
    dev = path.stat().st_dev
    return os.major(dev) != 0 and Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").exists()


# Where test files go: the device and I/O scheduler tests need a block device under them,
# and a container's /tmp may be overlay or tmpfs.
DISK_DIRECTORIES = (Path("/var/tmp"), Path(tempfile.gettempdir()), REPO / ".pytest_cache")


def disk_directory(prefix: str) -> Path:
    """A fresh private directory on the first of DISK_DIRECTORIES that is on a block device."""
    for base in DISK_DIRECTORIES:
        base.mkdir(parents=True, exist_ok=True)
        if on_a_block_device(base):
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    pytest.skip(f"none of {', '.join(map(str, DISK_DIRECTORIES))} is on a block device")


Held = Path | tuple[Path, int, int]  # a file or a directory's files; or (file, offset, length)


@contextmanager
def held_in_memory(*parts: Held) -> Iterator[None]:
    """Pages locked in memory while the block runs (mapped and mlocked, as `pagewarm sidecar
    --mlock` does; read in first where missing). These VMs run a DAMON pageout scheme that
    takes page cache nobody touched for about a minute, a whole region at a time (a 64 MiB
    file gone in one step), and on a shared machine another test run may drop the whole
    page cache: a test that needs pages to stay resident across seconds holds them so."""
    lib = libc()
    lib.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    with ExitStack() as stack:
        for path, offset, length in _held_ranges(parts):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, fd)
            address = stack.enter_context(mapped(fd, offset, length))  # munmap unlocks
            if lib.mlock(address, length) != 0:
                pytest.skip(f"holding {path} in memory: mlock: {os.strerror(ctypes.get_errno())}")
        yield


def _held_ranges(parts: tuple[Held, ...]) -> Iterator[tuple[Path, int, int]]:
    for part in parts:
        if isinstance(part, tuple):
            yield part
            continue
        files = [part] if part.is_file() else sorted(p for p in part.rglob("*") if p.is_file())
        yield from ((f, 0, size) for f in files if (size := f.stat().st_size))


def evict_path(path: Path) -> None:
    """Drop a file's or a tree's pages (the same syscalls pagewarm evict uses)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            drop(fd)
        finally:
            os.close(fd)


def write_random(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            block = min(remaining, 8 << 20)
            handle.write(os.urandom(block))
            remaining -= block
        handle.flush()
        os.fsync(handle.fileno())
    return path


def pagewarm(
    *args: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    user: int | None = None,
    timeout: float = 120,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a new process (optionally as another uid), JSON logs."""
    full_env = {**os.environ, "PAGEWARM_LOG_FORMAT": "json", **(env or {})}
    argv = [sys.executable, "-m", "controller.cli", *map(str, args)]
    if user is not None:
        setpriv = require_binary("setpriv")
        argv = [setpriv, f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(
        argv, env=full_env, capture_output=True, text=True, timeout=timeout, check=check, cwd=REPO
    )


MODELS_WITHOUT_WEIGHTS = (
    "nothing",
    "zero_byte_shards",
    "fifos_only",
    "sockets_and_dead_links",
    "metadata_only",
    "bin_beside_safetensors_patterns",
)


def fill_without_weights(model: Path, contents: str) -> None:
    """A model directory that holds no weight bytes, in one of the ways they come
    (``MODELS_WITHOUT_WEIGHTS``; the last one only under weight patterns of *.safetensors)."""
    model.mkdir()
    if contents == "zero_byte_shards":
        (model / "model-00001-of-00002.safetensors").touch()
        (model / "model-00002-of-00002.safetensors").touch()
    elif contents == "fifos_only":
        os.mkfifo(model / "model.safetensors")
    elif contents == "sockets_and_dead_links":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(model / "model.safetensors"))
        (model / "other.safetensors").symlink_to("nowhere")
    elif contents == "metadata_only":
        (model / "config.json").write_text("{}")
        (model / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    elif contents == "bin_beside_safetensors_patterns":
        write_random(model / "pytorch_model.bin", 4096)
