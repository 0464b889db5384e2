"""A fleet of node agents on one machine: each a real `pagewarm node` process with its own
models (its own files: the page cache is the machine's, so each node's models are its own
copies), features directory, node name and memory cgroup; truth measured apart from it.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.linux.memcg import find_memory_cgroup
from exporter.linux.mountinfo import parse_mountinfo
from tests.memcg import LIMIT_FILE, MemoryCgroup, memory_cgroup
from tests.support import require_binary

_RESIDENT = re.compile(r"Resident Pages:\s+(\d+)/(\d+)")


def vmtouch_ratio(path: Path) -> float:
    """The resident share of ``path``'s files as vmtouch counts it (mincore, as root: true)."""
    out = subprocess.run(
        [require_binary("vmtouch"), "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    match = _RESIDENT.search(out)
    assert match is not None, out
    resident, total = int(match.group(1)), int(match.group(2))
    return resident / total if total else 0.0


def _cgroup2_root() -> Path | None:
    """Where a cgroup2 hierarchy is mounted, when the memory controller is on v1 (hybrid)."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return next((Path(m.mountpoint) for m in mounts if m.fstype == "cgroup2"), None)


@dataclass(frozen=True)
class NodeCgroups:
    memory: MemoryCgroup
    pressure: Path | None  # a cgroup2 group for PSI where memory is on v1 (None on v2)

    def join_prefix(self) -> list[str]:
        """``sh -c ... sh``: moves the shell into the cgroups, then execs its arguments."""
        joins = [f"echo $$ > {self.memory.path}/cgroup.procs"]
        if self.pressure is not None:
            joins.append(f"echo $$ > {self.pressure}/cgroup.procs")
        return ["sh", "-c", " && ".join([*joins, 'exec "$@"']), "sh"]

    @property
    def pressure_file(self) -> Path:
        return (self.pressure or self.memory.path) / "memory.pressure"

    def usage_bytes(self) -> int:
        name = "memory.usage_in_bytes" if self.memory.version == 1 else "memory.current"
        return int((self.memory.path / name).read_text())

    def set_limit(self, limit_bytes: int) -> None:
        (self.memory.path / LIMIT_FILE[self.memory.version]).write_text(str(limit_bytes))


@contextmanager
def node_cgroups(limit_bytes: int) -> Iterator[NodeCgroups]:
    with memory_cgroup(limit_bytes) as memory:
        own = find_memory_cgroup()
        root = _cgroup2_root() if own is not None and own.version == 1 else None
        if root is None:
            yield NodeCgroups(memory, None)
            return
        pressure = root / f"pagewarm-node-{uuid.uuid4().hex[:8]}"
        pressure.mkdir()
        if not (pressure / "memory.pressure").exists():
            pressure.rmdir()
            pytest.skip("no PSI in the cgroup2 hierarchy (kernel without CONFIG_PSI?)")
        try:
            yield NodeCgroups(memory, pressure)
        finally:
            pressure.rmdir()
