"""Collector ``devices``: which block devices serve each model, with their I/O scheduler,
read-ahead and rotational flag.

path -> mount (/proc/self/mountinfo, read once per collection) -> device number -> disk in
sysfs (a partition -> its disk, dm/md -> their slaves). A model whose files sit on several
filesystems (a Hugging Face cache whose blobs live elsewhere) is mapped file system by file
system. Filesystems without a block device (overlay, NFS, FUSE, tmpfs) still report their
type and mountpoint in ``pagewarm_model_device_info``, with an empty ``device``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import Metric

from exporter.collectors.base import add_gauge, gauge
from exporter.linux.blockdev import (
    SYSFS,
    BlockDevice,
    device_number,
    disks_for_devnum,
    read_block_device,
)
from exporter.linux.mountinfo import MOUNTINFO, Mount, mount_for_path, parse_mountinfo
from exporter.models import ModelScan, label_value
from exporter.weightset import WeightSet


def storage_paths(weight_set: WeightSet) -> list[Path]:
    """One path per filesystem the weight set touches: its root, then a file of each other
    device (files carry the device number their stat returned during the scan)."""
    paths = [weight_set.root]
    seen: set[int] = set()
    for f in weight_set.files:
        if f.device not in seen:
            seen.add(f.device)
            paths.append(f.real_path)
    return paths


# Where one path of a model lives: filesystem type and mountpoint (as labels), and the
# device number of its block device (None: no block device, e.g. tmpfs, NFS).
_Placement = tuple[str, str, tuple[int, int] | None]
_INFO_LABELS = ("model", "device", "fstype", "mountpoint")


class DevicesCollector:
    name = "devices"

    def __init__(self, sysfs: Path = SYSFS, mountinfo: Path = MOUNTINFO) -> None:
        self.sysfs = sysfs
        self.mountinfo = mountinfo
        self._mounts_text: str | None = None
        self._mounts: list[Mount] = []
        # Per model path: the weight set its placements were found for, and them. Kept
        # while the mount table is the same: a node's 1,000 models are mapped once, and
        # each collection reads sysfs once per block device.
        self._placements: dict[Path, tuple[WeightSet, tuple[_Placement, ...]]] = {}

    def collect_models(self, scan: ModelScan) -> Iterator[Metric]:
        text = self.mountinfo.read_text()
        if text != self._mounts_text:
            self._mounts_text, self._mounts = text, parse_mountinfo(text)
            self._placements = {}
        disks: dict[tuple[int, int], list[str]] = {}
        devices: dict[str, BlockDevice] = {}
        rows: set[tuple[str, str, str, str]] = set()
        placements: dict[Path, tuple[WeightSet, tuple[_Placement, ...]]] = {}
        for model, weight_set in scan.available:
            found = self._placements_of(model.path, weight_set)
            placements[model.path] = (weight_set, found)
            for fstype, mountpoint, devnum in found:
                if devnum is not None and devnum not in disks:
                    disks[devnum] = disks_for_devnum(*devnum, sysfs=self.sysfs)
                names = disks[devnum] if devnum is not None else []
                if not names:
                    rows.add((model.name, "", fstype, mountpoint))
                for name in names:
                    if name not in devices:
                        devices[name] = read_block_device(name, self.sysfs)
                    rows.add((model.name, name, fstype, mountpoint))
        self._placements = placements
        yield from _device_families(devices)
        info = gauge(
            "pagewarm_model_device_info",
            "The filesystem and block device serving a model (device empty: none, e.g. tmpfs).",
            _INFO_LABELS,
        )
        for row in sorted(rows):
            add_gauge(info, dict(zip(_INFO_LABELS, row, strict=True)), 1.0)
        yield info

    def _placements_of(self, path: Path, weight_set: WeightSet) -> tuple[_Placement, ...]:
        known = self._placements.get(path)
        if known is not None and known[0] is weight_set:
            return known[1]
        found: list[_Placement] = []
        for storage_path in storage_paths(weight_set):
            mount = mount_for_path(storage_path, self._mounts)
            if mount is None:  # vanished since the scan
                continue
            placement = (label_value(mount.fstype), label_value(mount.mountpoint))
            found.append((*placement, device_number(mount)))
        return tuple(dict.fromkeys(found))


def _device_families(devices: dict[str, BlockDevice]) -> Iterator[Metric]:
    scheduler = gauge(
        "pagewarm_io_scheduler_info",
        "The I/O scheduler of a block device serving a model (/sys/block/*/queue/scheduler).",
        ["device", "scheduler"],
    )
    read_ahead = gauge(
        "pagewarm_block_device_read_ahead_bytes", "Read-ahead of a block device.", ["device"]
    )
    rotational = gauge(
        "pagewarm_block_device_rotational",
        "1 for a rotational disk, 0 for solid state.",
        ["device"],
    )
    for name in sorted(devices):
        device = devices[name]
        if device.scheduler is not None:
            scheduler.add_metric([name, device.scheduler], 1.0)
        if device.read_ahead_bytes is not None:
            read_ahead.add_metric([name], device.read_ahead_bytes)
        if device.rotational is not None:
            rotational.add_metric([name], 1.0 if device.rotational else 0.0)
    yield from (scheduler, read_ahead, rotational)
