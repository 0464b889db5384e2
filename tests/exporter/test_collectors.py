"""The collectors over real files, and over fake sysfs, mountinfo and cgroup trees where the
real ones cannot show the case (a partition, a dm device, NFS, a cgroup v2 pod limit)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors import build_collector_set
from exporter.collectors.base import CollectorSet
from exporter.collectors.devices import DevicesCollector
from exporter.collectors.discovery import DiscoveryCollector
from exporter.collectors.memory import MemoryCollector
from exporter.collectors.residency import ResidencyCollector
from exporter.linux.mountinfo import read_mounts
from exporter.models import ModelScanner, ModelSources, ModelSpec
from exporter.residency import ModelResidency, ResidencyProbe
from exporter.settings import ExporterSettings
from exporter.weightset import SkipReason, WeightSet
from tests.exporter.util import label_values, series, value
from tests.support import MODELS_WITHOUT_WEIGHTS, fill_without_weights, write_random

KiB = 1 << 10


def _model(root: Path, shards: int = 2, size: int = 64 * KiB) -> Path:
    for i in range(shards):
        write_random(root / f"model-{i:05d}-of-{shards:05d}.safetensors", size)
    (root / "config.json").write_text("{}")
    return root


def _settings(tmp_path: Path, **overrides: object) -> ExporterSettings:
    return ExporterSettings(samples=tmp_path / "samples.jsonl", **overrides)  # type: ignore[arg-type]


def _collect(collectors: CollectorSet) -> list[Metric]:
    return list(collectors.collect())


def test_every_contract_family_is_reported_for_a_real_model(tmp_path: Path) -> None:
    model = _model(tmp_path / "llama")
    metrics = _collect(build_collector_set([ModelSpec(model, "llama")], _settings(tmp_path)))
    size = sum(f.stat().st_size for f in model.iterdir())
    assert value(metrics, "pagewarm_model_present", model="llama") == 1
    assert value(metrics, "pagewarm_model_files", model="llama") == 3
    assert value(metrics, "pagewarm_model_size_bytes", model="llama") == size
    assert value(metrics, "pagewarm_model_residency_trusted", model="llama") == 1
    resident = value(metrics, "pagewarm_model_resident_bytes", model="llama")
    ratio = value(metrics, "pagewarm_model_resident_ratio", model="llama")
    assert resident is not None
    assert ratio == pytest.approx(resident / size)
    for name in ("dirty", "evicted", "recently_evicted"):
        assert value(metrics, f"pagewarm_model_{name}_bytes", model="llama") is not None
    assert label_values(metrics, "pagewarm_file_size_bytes", "file") == {
        "model-00000-of-00002.safetensors",
        "model-00001-of-00002.safetensors",
        "config.json",
    }
    assert value(metrics, "pagewarm_memory_available_bytes") is not None
    assert value(metrics, "pagewarm_build_info") == 1
    assert label_values(metrics, "pagewarm_collector_success", "collector") == {
        "models",
        "residency",
        "devices",
        "memory",
        "samples",
        "self",
    }
    assert set(series(metrics, "pagewarm_collector_success").values()) == {1.0}
    assert series(metrics, "pagewarm_model_device_info")


def test_a_vanished_model_path_is_reported_and_the_others_keep_reporting(tmp_path: Path) -> None:
    kept, doomed = _model(tmp_path / "kept"), _model(tmp_path / "doomed")
    collectors = build_collector_set([kept, doomed], _settings(tmp_path))
    assert value(_collect(collectors), "pagewarm_model_present", model="doomed") == 1

    shutil.rmtree(doomed)
    metrics = _collect(collectors)
    assert value(metrics, "pagewarm_model_present", model="doomed") == 0
    assert value(metrics, "pagewarm_model_size_bytes", model="doomed") is None
    assert value(metrics, "pagewarm_model_present", model="kept") == 1
    assert value(metrics, "pagewarm_model_files", model="kept") == 3
    assert set(series(metrics, "pagewarm_collector_success").values()) == {1.0}

    _model(doomed, shards=1)  # it comes back, smaller
    metrics = _collect(collectors)
    assert value(metrics, "pagewarm_model_present", model="doomed") == 1
    assert value(metrics, "pagewarm_model_files", model="doomed") == 2


def _hf_entry(hub: Path, name: str, revision: str, shards: list[str]) -> Path:
    entry = hub / name
    snapshot = entry / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for shard in shards:
        blob = write_random(entry / "blobs" / f"{revision}-{shard}", 16 * KiB)
        (snapshot / shard).symlink_to(os.path.relpath(blob, snapshot))
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / "main").write_text(revision)
    return entry


def test_a_new_revision_replaces_the_old_one_on_the_next_collection(tmp_path: Path) -> None:
    entry = _hf_entry(tmp_path, "models--org--tiny", "rev1", ["model.safetensors"])
    collectors = build_collector_set([entry], _settings(tmp_path))
    metrics = _collect(collectors)
    assert label_values(metrics, "pagewarm_file_size_bytes", "file") == {"model.safetensors"}

    _hf_entry(tmp_path, "models--org--tiny", "rev2", ["a.safetensors", "b.safetensors"])
    shutil.rmtree(entry / "snapshots" / "rev1")  # the cache was pruned
    metrics = _collect(collectors)
    assert label_values(metrics, "pagewarm_file_size_bytes", "file") == {
        "a.safetensors",
        "b.safetensors",
    }
    assert value(metrics, "pagewarm_model_size_bytes", model="org/tiny") == 32 * KiB


def test_models_dir_watches_subdirectories_and_hub_entries(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _model(models / "llama")
    _hf_entry(models, "models--org--tiny", "rev1", ["model.safetensors"])
    _hf_entry(models, "datasets--org--data", "rev1", ["x.safetensors"])
    (models / ".locks").mkdir()
    (models / "version.txt").write_text("1")
    scanner = ModelScanner(ModelSources(models_dir=models))
    assert {m.name for m in scanner.scan().models} == {"llama", "org/tiny"}

    shutil.rmtree(models / "llama")
    assert {m.name for m in scanner.scan().models} == {"org/tiny"}
    shutil.rmtree(models)
    scan = scanner.scan()
    assert scan.models == ()
    assert scan.models_dir_error is not None
    assert "cannot list models directory" in scan.models_dir_error


def test_models_sharing_a_name_get_unique_labels(tmp_path: Path) -> None:
    first, second = _model(tmp_path / "a" / "llama"), _model(tmp_path / "b" / "llama")
    scan = ModelScanner(ModelSources.of([first, second, first])).scan()
    assert [m.name for m in scan.models] == ["llama", str(second)]


def _writable_tmpfs() -> Path:
    """/dev/shm, or where it is missing another writable tmpfs mount (/run, /tmp)."""
    mounts = [m for m in read_mounts() if m.fstype == "tmpfs" and os.access(m.mountpoint, os.W_OK)]
    mounts.sort(key=lambda m: m.mountpoint != "/dev/shm")
    if not mounts:
        pytest.skip("no writable tmpfs mount (not even /dev/shm) on this machine")
    return Path(mounts[0].mountpoint)


@pytest.fixture
def shm_model() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="pagewarm-test-", dir=_writable_tmpfs()))
    yield _model(root / "tiny")
    shutil.rmtree(root, ignore_errors=True)


def test_a_model_on_tmpfs_has_a_filesystem_but_no_device(shm_model: Path, tmp_path: Path) -> None:
    metrics = _collect(build_collector_set([ModelSpec(shm_model, "shm")], _settings(tmp_path)))
    info = series(metrics, "pagewarm_model_device_info")
    mountpoint = str(shm_model.parent.parent)
    assert [dict(k) for k in info] == [
        {"model": "shm", "device": "", "fstype": "tmpfs", "mountpoint": mountpoint}
    ]
    assert series(metrics, "pagewarm_io_scheduler_info") == {}
    # tmpfs pages live in the page cache (unless swapped out: not asserted as exactly 1.0).
    ratio = value(metrics, "pagewarm_model_resident_ratio", model="shm")
    assert ratio is not None and ratio >= 0.95
    assert value(metrics, "pagewarm_collector_success", collector="devices") == 1


def _fake_sysfs(root: Path) -> Path:
    """sda1 (8:1, a partition of sda) and dm-0 (253:0, on nvme0n1p1 and nvme1n1)."""
    sysfs = root / "sys"
    sda = sysfs / "devices" / "pci0" / "block" / "sda"
    nvme0 = sysfs / "devices" / "pci1" / "block" / "nvme0n1"
    nvme1 = sysfs / "devices" / "pci2" / "block" / "nvme1n1"
    dm = sysfs / "devices" / "virtual" / "block" / "dm-0"
    for partition in (sda / "sda1", nvme0 / "nvme0n1p1"):
        partition.mkdir(parents=True)
        (partition / "partition").write_text("1\n")
    nvme1.mkdir(parents=True)
    (dm / "slaves").mkdir(parents=True)
    (dm / "slaves" / "nvme0n1p1").symlink_to(nvme0 / "nvme0n1p1")
    (dm / "slaves" / "nvme1n1").symlink_to(nvme1)
    (sysfs / "dev" / "block").mkdir(parents=True)
    (sysfs / "dev" / "block" / "8:1").symlink_to(sda / "sda1")
    (sysfs / "dev" / "block" / "253:0").symlink_to(dm)
    queues = {
        "sda": ("mq-deadline kyber [bfq] none\n", "128\n", "1\n"),
        "nvme0n1": ("[none] mq-deadline\n", "256\n", "0\n"),
        "nvme1n1": (None, "512\n", "0\n"),  # a driver without a scheduler file
    }
    for disk, (scheduler, read_ahead_kb, rotational) in queues.items():
        queue = sysfs / "block" / disk / "queue"
        queue.mkdir(parents=True)
        if scheduler is not None:
            (queue / "scheduler").write_text(scheduler)
        (queue / "read_ahead_kb").write_text(read_ahead_kb)
        (queue / "rotational").write_text(rotational)
    return sysfs


def test_devices_map_partitions_to_disks_and_dm_to_slaves(tmp_path: Path) -> None:
    on_sda, on_dm, on_nfs = (_model(tmp_path / n, shards=1) for n in ("sda", "dm", "nfs"))
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"1 0 8:1 / {on_sda} rw - ext4 /dev/sda1 rw\n"
        f"2 0 253:0 / {on_dm} rw - xfs /dev/mapper/vg-lv rw\n"
        f"3 0 0:55 / {on_nfs} rw - nfs4 server:/export rw\n"
    )
    scan = ModelScanner(ModelSources.of([on_sda, on_dm, on_nfs])).scan()
    metrics = list(DevicesCollector(_fake_sysfs(tmp_path), mountinfo).collect_models(scan))

    assert {
        tuple(sorted(dict(k).items())) for k in series(metrics, "pagewarm_model_device_info")
    } == {
        (("device", "sda"), ("fstype", "ext4"), ("model", "sda"), ("mountpoint", str(on_sda))),
        (("device", "nvme0n1"), ("fstype", "xfs"), ("model", "dm"), ("mountpoint", str(on_dm))),
        (("device", "nvme1n1"), ("fstype", "xfs"), ("model", "dm"), ("mountpoint", str(on_dm))),
        (("device", ""), ("fstype", "nfs4"), ("model", "nfs"), ("mountpoint", str(on_nfs))),
    }
    assert {
        tuple(sorted(dict(k).values())) for k in series(metrics, "pagewarm_io_scheduler_info")
    } == {
        ("bfq", "sda"),
        ("none", "nvme0n1"),
    }
    assert value(metrics, "pagewarm_block_device_read_ahead_bytes", device="nvme1n1") == 512 * KiB
    assert value(metrics, "pagewarm_block_device_rotational", device="sda") == 1
    assert value(metrics, "pagewarm_block_device_rotational", device="nvme0n1") == 0


def _cgroup_v2(tmp_path: Path, *, pod_limit: str, container_limit: str) -> tuple[Path, Path]:
    proc_self, sysroot = tmp_path / "proc" / "self", tmp_path / "root"
    proc_self.mkdir(parents=True)
    (proc_self / "cgroup").write_text("0::/kubepods/pod1/ctr\n")
    (proc_self / "mountinfo").write_text("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    pod = sysroot / "sys" / "fs" / "cgroup" / "kubepods" / "pod1"
    for level, limit, usage in ((pod, pod_limit, "3000"), (pod / "ctr", container_limit, "1000")):
        level.mkdir(parents=True, exist_ok=True)
        (level / "memory.max").write_text(f"{limit}\n")
        (level / "memory.current").write_text(f"{usage}\n")
    return proc_self, sysroot


def test_memory_reports_the_cgroup_and_leaves_out_an_unlimited_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8192 kB\nMemAvailable:  2048 kB\n")
    proc_self, sysroot = _cgroup_v2(tmp_path, pod_limit="4096", container_limit="max")
    metrics = list(MemoryCollector(meminfo, proc_self, sysroot).collect())
    assert value(metrics, "pagewarm_memory_available_bytes") == 2048 * KiB
    assert value(metrics, "pagewarm_memory_cgroup_usage_bytes") == 1000
    assert value(metrics, "pagewarm_memory_cgroup_limit_bytes") is None  # unlimited
    assert value(metrics, "pagewarm_memory_cgroup_headroom_bytes") == 4096 - 3000


def test_memory_without_a_cgroup_still_reports_mem_available(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:  1024 kB\n")
    proc_self = tmp_path / "self"
    proc_self.mkdir()
    (proc_self / "cgroup").write_text("")
    (proc_self / "mountinfo").write_text("")
    metrics = list(MemoryCollector(meminfo, proc_self, tmp_path).collect())
    assert [m.name for m in metrics] == ["pagewarm_memory_available_bytes"]


class _Exploding:
    name = "exploding"

    def collect(self) -> list[Metric]:
        raise RuntimeError("probe bug")


class _FailsOnOneModel(ResidencyProbe):
    def measure(self, weight_set: WeightSet, buckets: int = 0) -> ModelResidency:
        if weight_set.root.name == "bad":
            raise RuntimeError("unexpected")
        return super().measure(weight_set, buckets)


def test_a_failing_collector_leaves_the_others_reporting(tmp_path: Path) -> None:
    good, bad = _model(tmp_path / "good"), _model(tmp_path / "bad")
    collectors = CollectorSet(
        ModelScanner(ModelSources.of([good, bad])),
        DiscoveryCollector(),
        model_collectors=[
            ResidencyCollector(_FailsOnOneModel()),
            DevicesCollector(mountinfo=tmp_path / "no-mountinfo"),
        ],
        collectors=[_Exploding(), MemoryCollector()],
    )
    metrics = _collect(collectors)
    success = {
        dict(k)["collector"]: v for k, v in series(metrics, "pagewarm_collector_success").items()
    }
    assert success == {
        "models": 1,
        "residency": 0,  # one model failed: the other is still reported
        "devices": 0,
        "exploding": 0,
        "memory": 1,
    }
    assert value(metrics, "pagewarm_model_size_bytes", model="good") is not None
    assert value(metrics, "pagewarm_model_size_bytes", model="bad") is None
    assert value(metrics, "pagewarm_memory_available_bytes") is not None
    assert series(metrics, "pagewarm_model_device_info") == {}
    assert len(series(metrics, "pagewarm_collector_duration_seconds")) == 5
    # And the failures do not stick: the next collection runs everything again.
    assert value(_collect(collectors), "pagewarm_collector_success", collector="memory") == 1


def test_collector_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="memory"):
        CollectorSet(
            ModelScanner(ModelSources()),
            DiscoveryCollector(),
            collectors=[MemoryCollector(), MemoryCollector()],
        )


def test_per_file_series_are_capped_shards_first(tmp_path: Path) -> None:
    model = _model(tmp_path / "big", shards=5, size=4 * KiB)
    settings = _settings(tmp_path, file_series_limit=3)
    metrics = _collect(build_collector_set([model], settings))
    assert label_values(metrics, "pagewarm_file_size_bytes", "file") == {
        f"model-0000{i}-of-00005.safetensors" for i in range(3)
    }
    assert len(series(metrics, "pagewarm_file_resident_bytes")) == 3
    assert value(metrics, "pagewarm_model_files", model="big") == 6  # the totals stay whole

    none = _collect(build_collector_set([model], _settings(tmp_path, file_series_limit=0)))
    assert series(none, "pagewarm_file_size_bytes") == {}


def test_file_names_that_are_not_utf8_still_render(tmp_path: Path) -> None:
    model = tmp_path / "odd"
    model.mkdir()
    write_random(Path(os.fsdecode(bytes(model) + b"/caf\xe9.safetensors")), 4 * KiB)
    registry = CollectorRegistry()
    registry.register(build_collector_set([model], _settings(tmp_path)))
    text = generate_latest(registry).decode()
    assert 'file="caf\ufffd.safetensors"' in text


@pytest.mark.parametrize("contents", MODELS_WITHOUT_WEIGHTS)
def test_a_model_without_weight_bytes_is_absent_never_fully_resident(
    tmp_path: Path, contents: str
) -> None:
    empty = tmp_path / "empty"
    fill_without_weights(empty, contents)
    settings = _settings(tmp_path, weight_patterns=("*.safetensors",))
    metrics = _collect(build_collector_set([empty], settings))
    assert value(metrics, "pagewarm_model_present", model="empty") == 0
    for family in ("files", "size_bytes", "resident_bytes", "resident_ratio"):
        assert value(metrics, f"pagewarm_model_{family}", model="empty") is None, family
    assert value(metrics, "pagewarm_model_residency_trusted", model="empty") is None
    assert set(series(metrics, "pagewarm_collector_success").values()) == {1.0}


def test_families_are_fresh_on_every_collection(tmp_path: Path) -> None:
    model = _model(tmp_path / "m")
    collectors = build_collector_set([model], _settings(tmp_path))
    first, second = _collect(collectors), _collect(collectors)
    assert all(a is not b for a, b in zip(first, second, strict=True))
    assert isinstance(first[0], GaugeMetricFamily)


PER_MODEL_FAMILIES = {
    "pagewarm_model_present",
    "pagewarm_model_files",
    "pagewarm_model_size_bytes",
    "pagewarm_model_resident_bytes",
    "pagewarm_model_resident_ratio",
    "pagewarm_model_residency_trusted",
    "pagewarm_model_dirty_bytes",
    "pagewarm_model_evicted_bytes",
    "pagewarm_model_recently_evicted_bytes",
    "pagewarm_model_device_info",
}


def _series_of(metrics: list[Metric], model: str) -> list[str]:
    """The names of every series labelled with ``model``, one entry per series."""
    return [s.name for m in metrics for s in m.samples if s.labels.get("model") == model]


def test_a_models_directory_exports_ten_series_a_model_and_no_per_file_ones(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    for name in ("a", "b", "c"):
        _model(models / name, shards=4)
    metrics = _collect(build_collector_set(ModelSources(models_dir=models), _settings(tmp_path)))
    for name in ("a", "b", "c"):
        names = _series_of(metrics, name)
        assert sorted(names) == sorted(PER_MODEL_FAMILIES), name  # one series each
    assert series(metrics, "pagewarm_file_size_bytes") == {}
    assert not [m for m in metrics if m.name.startswith("pagewarm_file_")]  # no empty families
    assert value(metrics, "pagewarm_model_files", model="a") == 5


@pytest.mark.parametrize(
    ("setting", "shape", "per_file"),
    [
        (None, "directory", False),
        (None, "one", True),
        (None, "two", True),
        (True, "directory", True),
        (False, "one", False),
        (False, "two", False),
    ],
)
def test_per_file_series_follow_the_setting_and_default_to_the_shape(
    tmp_path: Path, setting: bool | None, shape: str, per_file: bool
) -> None:
    models = tmp_path / "models"
    paths = [_model(models / "a"), _model(models / "b")]
    sources = {
        "directory": ModelSources(models_dir=models),
        "one": ModelSources.of(paths[:1]),
        "two": ModelSources.of(paths),
    }[shape]
    settings = _settings(tmp_path, per_file_series=setting)
    metrics = _collect(build_collector_set(sources, settings))
    expected_models = {"a"} if shape == "one" else {"a", "b"}
    assert label_values(metrics, "pagewarm_model_size_bytes", "model") == expected_models
    files = {
        (dict(k)["model"], dict(k)["file"]) for k in series(metrics, "pagewarm_file_size_bytes")
    }
    names = ("model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors", "config.json")
    if per_file:
        assert files == {(model, name) for model in expected_models for name in names}
        assert len(series(metrics, "pagewarm_file_resident_bytes")) == len(files)
    else:
        assert not files
        assert not series(metrics, "pagewarm_file_resident_bytes")
    assert label_values(metrics, "pagewarm_model_resident_bytes", "model") == expected_models


def test_skip_reasons_are_all_there_for_a_configured_model_and_as_they_occur_in_a_directory(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    for name in ("found", "clean"):
        _model(models / name, shards=1)
    os.mkfifo(models / "found" / "pipe.safetensors")
    (models / "found" / "broken.safetensors").symlink_to(tmp_path / "nowhere")
    configured = _model(tmp_path / "configured", shards=1)
    os.mkfifo(configured / "pipe.safetensors")
    sources = ModelSources((ModelSpec(configured),), models_dir=models)
    metrics = _collect(build_collector_set(sources, _settings(tmp_path)))

    skipped = {
        (dict(k)["model"], dict(k)["reason"]): v
        for k, v in series(metrics, "pagewarm_model_skipped_files").items()
    }
    assert {r: v for (m, r), v in skipped.items() if m == "configured"} == {
        reason.value: (1.0 if reason is SkipReason.NOT_REGULAR else 0.0) for reason in SkipReason
    }
    assert {r: v for (m, r), v in skipped.items() if m == "found"} == {
        "broken_link": 1.0,
        "not_regular_file": 1.0,
    }
    assert not [key for key in skipped if key[0] == "clean"]
    assert value(metrics, "pagewarm_model_present", model="clean") == 1


def test_a_model_that_vanishes_between_collections_is_gone_with_its_series(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    for name in ("stays", "goes"):
        _model(models / name, shards=2)
    collectors = build_collector_set(
        ModelSources(models_dir=models), _settings(tmp_path, per_file_series=True)
    )
    first = _collect(collectors)
    assert label_values(first, "pagewarm_file_size_bytes", "model") == {"stays", "goes"}
    shutil.rmtree(models / "goes")
    (models / "stays" / "model-00001-of-00002.safetensors").unlink()
    second = _collect(collectors)
    assert label_values(second, "pagewarm_model_present", "model") == {"stays"}
    assert {dict(k)["file"] for k in series(second, "pagewarm_file_size_bytes")} == {
        "model-00000-of-00002.safetensors",
        "config.json",
    }
    assert value(second, "pagewarm_model_files", model="stays") == 2
