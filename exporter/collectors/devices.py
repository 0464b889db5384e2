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

from exporter.collectors.base import gauge
from exporter.linux.blockdev import SYSFS, BlockDevice, storage_for_path
from exporter.linux.mountinfo import MOUNTINFO, read_mounts
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


class DevicesCollector:
    name = "devices"

    def __init__(self, sysfs: Path = SYSFS, mountinfo: Path = MOUNTINFO) -> None:
        self.sysfs = sysfs
        self.mountinfo = mountinfo

    def collect_models(self, scan: ModelScan) -> Iterator[Metric]:
        mounts = read_mounts(self.mountinfo)
        devices: dict[str, BlockDevice] = {}
        placements: set[tuple[str, str, str, str]] = set()
        for model, weight_set in scan.available:
            for path in storage_paths(weight_set):
                storage = storage_for_path(path, mounts, self.sysfs)
                if storage is None:  # vanished since the scan
                    continue
                fs = (label_value(storage.fstype), label_value(storage.mountpoint))
                if not storage.devices:
                    placements.add((model.name, "", *fs))
                for device in storage.devices:
                    devices[device.name] = device
                    placements.add((model.name, device.name, *fs))
        yield from _device_families(devices)
        info = gauge(
            "pagewarm_model_device_info",
            "The filesystem and block device serving a model (device empty: none, e.g. tmpfs).",
            ["model", "device", "fstype", "mountpoint"],
        )
        for placement in sorted(placements):
            info.add_metric(list(placement), 1.0)
        yield info


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
