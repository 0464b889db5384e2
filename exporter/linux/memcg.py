"""The memory cgroup this process is charged to (v1 or v2), and how much room it has left.

Page cache is charged to the cgroup of the process that first reads it. A warmer whose
cgroup limit is below the model size evicts its own pages as it reads, so pre-warming must
know the tightest limit on the way up the visible hierarchy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from exporter.linux.kernelfile import read_kernel_text
from exporter.linux.mountinfo import Mount, parse_mountinfo

# cgroup v1 reports "no limit" as a huge page-aligned number near 2**63.
_V1_UNLIMITED = 1 << 62

_FILES = {
    1: ("memory.limit_in_bytes", "memory.usage_in_bytes"),
    2: ("memory.max", "memory.current"),
}


@dataclass(frozen=True, slots=True)
class MemoryCgroup:
    version: Literal[1, 2]
    path: Path
    usage_bytes: int  # charged to this process's own cgroup, page cache included
    limit_bytes: int | None  # this cgroup's own limit; None: unlimited
    # Bytes that can still be charged before the tightest limit up the visible hierarchy
    # is reached (a pod's limit may sit one level above the container's); None: no limit.
    headroom_bytes: int | None
    limiting_path: Path | None


def _parse_limit(text: str, version: int) -> int | None:
    text = text.strip()
    if text == "max":
        return None
    value = int(text)
    return None if version == 1 and value >= _V1_UNLIMITED else value


def _own_cgroup_dir(
    proc_cgroup: str, mounts: list[Mount], sysroot: Path
) -> tuple[Literal[1, 2], Path] | None:
    v1_path: str | None = None
    v2_path: str | None = None
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    # Prefer the v1 memory hierarchy on hybrid hosts: v2 then carries no memory controller.
    candidates: tuple[tuple[Literal[1, 2], str | None, str], ...] = (
        (1, v1_path, "cgroup"),
        (2, v2_path, "cgroup2"),
    )
    for version, cg_path, wanted in candidates:
        if cg_path is None:
            continue
        for mount in mounts:
            if mount.fstype != wanted or (version == 1 and "memory" not in mount.super_options):
                continue
            relative = (
                Path(cg_path).relative_to(mount.root) if cg_path.startswith(mount.root) else None
            )
            if relative is None:
                continue
            directory = sysroot / mount.mountpoint.lstrip("/") / relative
            if version == 2 and not (directory / "memory.current").exists():
                continue
            return version, directory
    return None


def find_memory_cgroup(
    proc_self: Path = Path("/proc/self"), sysroot: Path = Path("/")
) -> MemoryCgroup | None:
    """Read this process's memory cgroup; None when none is mounted or readable."""
    try:
        mounts = parse_mountinfo(read_kernel_text(proc_self / "mountinfo"))
        found = _own_cgroup_dir(read_kernel_text(proc_self / "cgroup"), mounts, sysroot)
    except OSError:
        return None
    if found is None:
        return None
    version, directory = found
    return read_memory_cgroup(directory, version)


def _read_limit(level: Path, version: Literal[1, 2]) -> int | None:
    return _parse_limit(read_kernel_text(level / _FILES[version][0]), version)


def _read_usage(level: Path, version: Literal[1, 2]) -> int:
    return int(read_kernel_text(level / _FILES[version][1]))


def read_memory_cgroup(directory: Path, version: Literal[1, 2]) -> MemoryCgroup | None:
    try:
        own_limit, own_usage = _read_limit(directory, version), _read_usage(directory, version)
    except (OSError, ValueError):
        return None
    tightest: tuple[int, Path] | None = None
    level, limit, usage = directory, own_limit, own_usage
    # Walk up while the files exist: a container sees its own subtree only. A level's usage
    # is read only where it has a limit: an unlimited level bounds nothing, and the usage of
    # the root's (v1) is the dear one to read (the kernel flushes the whole tree's counters).
    while True:
        if limit is not None and (tightest is None or limit - usage < tightest[0]):
            tightest = (max(0, limit - usage), level)
        if level.parent == level:
            break
        level = level.parent
        try:
            limit = _read_limit(level, version)
            usage = _read_usage(level, version) if limit is not None else 0
        except (OSError, ValueError):  # above the visible tree, or unreadable
            break
    headroom, limiting = tightest if tightest else (None, None)
    return MemoryCgroup(version, directory, own_usage, own_limit, headroom, limiting)
