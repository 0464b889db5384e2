"""Which block devices serve a path, with their I/O scheduler and read-ahead (sysfs).

path -> mount (mountinfo) -> major:minor -> /sys/dev/block/M:m; a partition maps to its
disk, a dm/md device to the disks it is built on (its slaves). Filesystems without a
block device (overlay, NFS, FUSE, tmpfs: major 0) give no device and no scheduler, but
their filesystem type is still reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from exporter.linux.mountinfo import Mount, mount_for_path, read_mounts

SYSFS = Path("/sys")


@dataclass(frozen=True, slots=True)
class BlockDevice:
    name: str  # kernel name of the whole disk: "vda", "nvme0n1"
    scheduler: str | None  # None when the queue has no scheduler file
    schedulers: tuple[str, ...]  # the ones the kernel offers
    read_ahead_bytes: int | None
    rotational: bool | None


@dataclass(frozen=True, slots=True)
class Storage:
    """What serves one path: the mount, its filesystem, and the disks under it."""

    mountpoint: str
    fstype: str
    source: str
    devices: tuple[BlockDevice, ...]  # empty for overlay, NFS, FUSE, tmpfs


def parse_scheduler(text: str) -> tuple[str | None, tuple[str, ...]]:
    """'none [mq-deadline] kyber' -> ('mq-deadline', ('none', 'mq-deadline', 'kyber'))."""
    names = text.split()
    current = next((n[1:-1] for n in names if n.startswith("[") and n.endswith("]")), None)
    if current is None and len(names) == 1:
        current = names[0]  # a single scheduler is printed without brackets
    return current, tuple(n.strip("[]") for n in names)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def read_block_device(name: str, sysfs: Path = SYSFS) -> BlockDevice:
    queue = sysfs / "block" / name / "queue"
    try:
        scheduler, offered = parse_scheduler((queue / "scheduler").read_text())
    except OSError:
        scheduler, offered = None, ()
    read_ahead_kb = _read_int(queue / "read_ahead_kb")
    rotational = _read_int(queue / "rotational")
    return BlockDevice(
        name=name,
        scheduler=scheduler,
        schedulers=offered,
        read_ahead_bytes=None if read_ahead_kb is None else read_ahead_kb * 1024,
        rotational=None if rotational is None else bool(rotational),
    )


def disks_for_devnum(major: int, minor: int, sysfs: Path = SYSFS) -> list[str]:
    """Whole-disk kernel names behind a device number (partitions and dm/md resolved)."""
    node = sysfs / "dev" / "block" / f"{major}:{minor}"
    try:
        real = node.resolve(strict=True)
    except OSError:
        return []
    return _disks_under(real, set())


def _disks_under(device_dir: Path, seen: set[Path]) -> list[str]:
    if device_dir in seen:
        return []
    seen.add(device_dir)
    if (device_dir / "partition").exists():
        device_dir = device_dir.parent
    slaves = device_dir / "slaves"
    children = sorted(slaves.iterdir()) if slaves.is_dir() else []
    if children:
        names: list[str] = []
        for child in children:
            for name in _disks_under(child.resolve(), seen):
                if name not in names:
                    names.append(name)
        return names
    return [device_dir.name]


def device_number(mount: Mount) -> tuple[int, int] | None:
    # major 0 is the kernel's "anonymous" block device: overlay, NFS, FUSE, tmpfs, proc;
    # btrfs too, whose source names the real device node.
    if mount.major != 0:
        return mount.major, mount.minor
    if mount.source.startswith("/dev/"):
        try:
            rdev = Path(mount.source).stat().st_rdev
        except OSError:
            return None
        return (os.major(rdev), os.minor(rdev)) if rdev else None
    return None


def storage_for_path(
    path: str | os.PathLike[str],
    mounts: list[Mount] | None = None,
    sysfs: Path = SYSFS,
) -> Storage | None:
    """What serves ``path``; None when no mount contains it (it does not exist)."""
    mount = mount_for_path(path, read_mounts() if mounts is None else mounts)
    if mount is None:
        return None
    devnum = device_number(mount)
    names = disks_for_devnum(*devnum, sysfs=sysfs) if devnum else []
    return Storage(
        mountpoint=mount.mountpoint,
        fstype=mount.fstype,
        source=mount.source,
        devices=tuple(read_block_device(name, sysfs) for name in names),
    )
