"""Pressure stall information (PSI): how much of the recent time tasks waited on memory.

``some`` is the share of time in which at least one task
of the cgroup (or of the whole system) stalled on memory: reclaim, refaults of pages just
evicted, swap-in. It rises when the page cache is fought over, which is exactly when
re-reading evicted pages only fights the kernel's reclaim.

The cgroup's own ``memory.pressure`` (cgroup2) is preferred: it counts the stalls of this
container's tasks, not the whole node's. PSI follows the cgroup2 hierarchy even where the
memory controller sits on cgroup v1 (hybrid hosts), so the file exists there too.
"""

from __future__ import annotations

from pathlib import Path

from exporter.linux.kernelfile import read_kernel_text
from exporter.linux.mountinfo import parse_mountinfo

SYSTEM_MEMORY_PRESSURE = Path("/proc/pressure/memory")


def read_some(path: Path) -> tuple[float, int]:
    """``some`` of a PSI file: (avg10 percent, total stalled microseconds); OSError or
    ValueError when unreadable."""
    for line in read_kernel_text(path).splitlines():
        kind, _, rest = line.partition(" ")
        if kind != "some":
            continue
        fields = dict(field.partition("=")[::2] for field in rest.split())
        return float(fields["avg10"]), int(fields["total"])
    raise ValueError(f"{path}: no 'some' line")


def memory_pressure_file(
    proc_self: Path = Path("/proc/self"), sysroot: Path = Path("/")
) -> Path | None:
    """This process's cgroup2 ``memory.pressure``, else the system's; None without PSI."""
    try:
        mounts = parse_mountinfo((proc_self / "mountinfo").read_text())
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        mounts, lines = [], []
    v2 = next((line[3:] for line in lines if line.startswith("0::")), "")
    for mount in mounts if v2 else ():
        if mount.fstype != "cgroup2" or not v2.startswith(mount.root):
            continue
        relative = v2[len(mount.root) :].lstrip("/")
        candidate = sysroot / mount.mountpoint.lstrip("/") / relative / "memory.pressure"
        if candidate.exists():
            return candidate
    system = sysroot / str(SYSTEM_MEMORY_PRESSURE).lstrip("/")
    return system if system.exists() else None
