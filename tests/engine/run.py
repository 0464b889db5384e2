"""Starting the realistic engine (engine.py) the way the sidecar tests start the vLLM
stand-in, and putting its libraries out of the page cache. Nothing pytest-specific: the
benchmarks use it too."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from controller.linux.pagecache import drop
from tests.engine import libtree
from tests.sidecar.pod import REPO, FakeVllm, fake_vllm_argv, free_port

ENGINE = Path(__file__).resolve().with_name("engine.py")


def engine_pattern(instance: str) -> str:
    """A --vllm-process-pattern that finds only this engine."""
    return rf"engine\.py .*--instance {instance}(\s|$)"


def engine_env(site_packages: Path | None) -> dict[str, str]:
    """The engine's environment: its synthetic site-packages on PYTHONPATH, where a real
    interpreter's site-packages would be (a recorder finds it there)."""
    env = dict(os.environ)
    if site_packages is not None:
        env["PYTHONPATH"] = str(site_packages)
    return env


def engine_argv(
    model: Path, port: int, events: Path, log: Path, instance: str, *args: str
) -> list[str]:
    return fake_vllm_argv(model, port, events, log, instance, *args, script=ENGINE)


def start_engine(
    model: Path,
    workdir: Path,
    site_packages: Path | None,
    *args: str,
    port: int | None = None,
    instance: str | None = None,
) -> FakeVllm:
    """The engine as a server (stop it with ``.stop()``); events in ``workdir``."""
    instance = instance or uuid.uuid4().hex[:10]
    port = port or free_port()
    events, log = workdir / "engine-events.jsonl", workdir / "engine.log"
    process = subprocess.Popen(
        engine_argv(model, port, events, log, instance, *args),
        cwd=REPO,
        env=engine_env(site_packages),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=None,
    )
    return FakeVllm(process, port, events, log, instance)


def evict_tree(site_packages: Path) -> None:
    """Put the synthetic libraries out of the page cache (pages other processes map stay)."""
    for path in libtree.files(site_packages):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            drop(fd)
        finally:
            os.close(fd)
