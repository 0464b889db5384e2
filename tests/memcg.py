"""A real memory cgroup with a limit, on the hierarchy this machine charges memory to: v1
where a v1 memory controller is mounted (these VMs: /sys/fs/cgroup/memory, with a cgroup2
mount that has no memory controller), v2 otherwise. The test starts its process in it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from exporter.linux.memcg import find_memory_cgroup
from tests.support import require_root

LIMIT_FILE = {1: "memory.limit_in_bytes", 2: "memory.max"}


@dataclass(frozen=True)
class MemoryCgroup:
    path: Path
    version: Literal[1, 2]

    @property
    def limit_reason(self) -> str:
        """How pagewarm names this limit when it stops at it."""
        return f"memory cgroup v{self.version} limit"

    def join_command(self) -> str:
        """A shell prefix that moves the shell into the cgroup before it execs "$@"."""
        return f'echo $$ > {self.path}/cgroup.procs && exec "$@"'

    def oom_kills(self) -> int:
        if self.version == 1:
            text, key = (self.path / "memory.oom_control").read_text(), "oom_kill"
        else:
            text, key = (self.path / "memory.events").read_text(), "oom_kill"
        counts = dict(line.split() for line in text.splitlines())
        return int(counts.get(key, "0"))


def _v2_parent(own: Path) -> Path:
    """Where a child of ours gets the memory controller: a cgroup that enables it for its
    children. Ours cannot (it holds processes, and v2 lets no cgroup have both): its parent
    does, since ours has the controller, where the parent is visible in this mount."""
    for candidate in (own, own.parent):
        control = candidate / "cgroup.subtree_control"
        if control.exists() and "memory" in control.read_text().split():
            return candidate
    pytest.skip(f"cgroup v2: neither {own} nor its parent enables memory for children")


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[MemoryCgroup]:
    """A fresh cgroup limited to ``limit_bytes``; removed afterwards (once it is empty)."""
    require_root("creating a memory cgroup")
    own = find_memory_cgroup()
    if own is None:
        pytest.skip("no memory cgroup (v1 memory controller or v2 memory.current) here")
    parent = own.path if own.version == 1 else _v2_parent(own.path)
    child = parent / f"pagewarm-test-{uuid.uuid4().hex[:8]}"
    child.mkdir()
    try:
        (child / LIMIT_FILE[own.version]).write_text(str(limit_bytes))
        yield MemoryCgroup(child, own.version)
    finally:
        child.rmdir()
