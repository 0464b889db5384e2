"""Weight sets kept between collections only while provably unchanged: every kind of change
to a model's tree (files gained, lost, replaced or renamed, links re-pointed, a Hugging Face
revision or snapshot) makes the next collection scan that model again, and only that
model; a change within the same timestamp tick as a scan is caught by the settling scan,
on a real filesystem whose timestamps are whole seconds."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.models import ModelScanner, ModelSources
from exporter.residency import ResidencyProbe
from exporter.weightset import DEFAULT_METADATA_PATTERNS, DEFAULT_WEIGHT_PATTERNS, WeightSet
from exporter.weightset_cache import SETTLE_SECONDS, WeightSetCache
from tests.support import require_binary, require_root, write_random

KiB = 1 << 10


def _shards(root: Path, *names: str, size: int = 4 * KiB) -> Path:
    for name in names:
        write_random(root / name, size)
    return root


def _replace(path: Path, size: int) -> None:
    """A new file renamed over the old one (how downloads and ``cp`` + ``mv`` land)."""
    temporary = write_random(path.with_name(path.name + ".tmp"), size)
    temporary.replace(path)


def _repoint(link: Path, target: str | Path) -> None:
    """ln -sfn: a new link renamed over the old one."""
    temporary = link.with_name(link.name + ".new")
    temporary.symlink_to(target)
    temporary.replace(link)


def _hub_entry(root: Path, *, refs: bool = True) -> Path:
    """models--org--name: blobs/, snapshots/rev1 and rev2 of links into blobs/, refs/main."""
    for revision in ("rev1", "rev2"):
        blob = write_random(root / "blobs" / f"sha-{revision}", 4 * KiB)
        snapshot = root / "snapshots" / revision
        snapshot.mkdir(parents=True)
        (snapshot / "model.safetensors").symlink_to(os.path.relpath(blob, snapshot))
    if refs:
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text("rev1")
    else:  # the newest snapshot wins: make rev1 the newest
        os.utime(root / "snapshots" / "rev2", (1_000_000_000, 1_000_000_000))
    return root


def _names(weight_set: WeightSet) -> dict[str, int]:
    return {weight_set.display_name(f): f.size for f in weight_set.files}


def _settled_scanner(models: list[Path]) -> ModelScanner:
    """A scanner whose weight sets are settled (scanned twice, nothing moved between)."""
    scanner = ModelScanner(ModelSources.of(models), weight_sets=WeightSetCache(settle_seconds=0))
    scanner.scan()
    scanner.scan()
    assert scanner.weight_sets.scans == 2 * len(models)
    return scanner


def test_a_tree_is_scanned_once_more_to_settle_and_then_not_again(tmp_path: Path) -> None:
    models = [_shards(tmp_path / n, "a.safetensors") for n in ("one", "two")]
    models.append(_hub_entry(tmp_path / "models--org--hub"))
    waiting = ModelScanner(ModelSources.of(models), weight_sets=WeightSetCache(settle_seconds=3600))
    for _ in range(3):
        waiting.scan()
    assert waiting.weight_sets.scans == 3  # within the settling time: served from cache

    scanner = _settled_scanner(models)
    for _ in range(3):
        assert len(scanner.scan().available) == 3
    assert scanner.weight_sets.scans == 6  # settled: never again while nothing changes


def test_every_change_to_a_tree_is_seen_on_the_next_collection(tmp_path: Path) -> None:
    elsewhere = _shards(tmp_path / "elsewhere", "b.safetensors", "c.safetensors")
    linked = _shards(tmp_path / "linked", "a.safetensors")
    (linked / "b.safetensors").symlink_to(elsewhere / "b.safetensors")
    subdir_link = _shards(tmp_path / "subdir-link", "a.safetensors")
    (subdir_link / "sub").symlink_to(_shards(tmp_path / "sub-old", "old.safetensors"))
    _shards(tmp_path / "sub-new", "new.safetensors")
    replaced_root = _shards(tmp_path / "replaced-root", "a.safetensors")
    _shards(tmp_path / "new-root", "z.safetensors")
    changes: dict[str, tuple[Path, Callable[[Path], object], dict[str, int]]] = {
        "gains a file": (
            _shards(tmp_path / "gains", "a.safetensors"),
            lambda m: _shards(m, "b.safetensors"),
            {"a.safetensors": 4 * KiB, "b.safetensors": 4 * KiB},
        ),
        "loses a file": (
            _shards(tmp_path / "loses", "a.safetensors", "b.safetensors"),
            lambda m: (m / "b.safetensors").unlink(),
            {"a.safetensors": 4 * KiB},
        ),
        "a file replaced": (
            _shards(tmp_path / "replaced", "a.safetensors"),
            lambda m: _replace(m / "a.safetensors", 8 * KiB),
            {"a.safetensors": 8 * KiB},
        ),
        "a file renamed": (
            _shards(tmp_path / "renamed", "a.safetensors"),
            lambda m: (m / "a.safetensors").rename(m / "z.safetensors"),
            {"z.safetensors": 4 * KiB},
        ),
        "a file in a subdirectory": (
            _shards(tmp_path / "nested", "a.safetensors", "sub/config.json"),
            lambda m: _shards(m / "sub", "deep.safetensors"),
            {"a.safetensors": 4 * KiB, "sub/config.json": 4 * KiB, "sub/deep.safetensors": 4 * KiB},
        ),
        "a link re-pointed": (
            linked,
            lambda m: _repoint(m / "b.safetensors", elsewhere / "c.safetensors"),
            {"a.safetensors": 4 * KiB, "b.safetensors": 4 * KiB},
        ),
        "a linked subdirectory re-pointed": (
            subdir_link,
            lambda m: _repoint(m / "sub", tmp_path / "sub-new"),
            {"a.safetensors": 4 * KiB, "sub/new.safetensors": 4 * KiB},
        ),
        "the model directory replaced": (
            replaced_root,
            lambda m: m.rename(tmp_path / "old-root") and (tmp_path / "new-root").rename(m),
            {"z.safetensors": 4 * KiB},
        ),
        "a hub revision (refs/main)": (
            _hub_entry(tmp_path / "models--org--revision"),
            lambda m: (m / "refs" / "main").write_text("rev2"),
            {"model.safetensors": 4 * KiB},
        ),
        "a hub snapshot's link re-pointed": (
            _hub_entry(tmp_path / "models--org--relinked"),
            lambda m: _repoint(
                m / "snapshots" / "rev1" / "model.safetensors",
                _shards(m / "blobs", "sha-big", size=16 * KiB) / "sha-big",
            ),
            {"model.safetensors": 16 * KiB},
        ),
        "a newer hub snapshot (no refs/main)": (
            _hub_entry(tmp_path / "models--org--norefs", refs=False),
            lambda m: os.utime(m / "snapshots" / "rev2"),
            {"model.safetensors": 4 * KiB},
        ),
    }
    scanner = _settled_scanner([m for m, _, _ in changes.values()])
    before = {m.path: w for m, w in scanner.scan().available}
    scans = scanner.weight_sets.scans
    for model, change, _ in changes.values():
        change(model)
    after = {m.path: w for m, w in scanner.scan().available}
    for kind, (model, _, expected) in changes.items():
        assert after[model] is not before[model], kind
        assert _names(after[model]) == expected, kind
    assert scanner.weight_sets.scans == scans + len(changes)
    # The links are followed to their new targets.
    assert after[linked].files[1].real_path == elsewhere / "c.safetensors"
    revision = after[tmp_path / "models--org--revision"]
    assert revision.files[0].real_path.name == "sha-rev2"
    assert after[tmp_path / "models--org--norefs"].root.name == "rev2"


def test_changes_outside_the_listed_tree_need_no_scan_and_are_measured(tmp_path: Path) -> None:
    """A blob replaced under its name, a blob added, a file rewritten in place: no
    directory the scan listed changed, so no scan; residency opens and fstats every file
    on every collection and reports the new sizes."""
    hub = _hub_entry(tmp_path / "models--org--hub")
    flat = _shards(tmp_path / "flat", "a.safetensors")
    scanner = _settled_scanner([hub, flat])
    scans = scanner.weight_sets.scans

    _replace(hub / "blobs" / "sha-rev1", 12 * KiB)
    _shards(hub / "blobs", "sha-unrelated")
    with (flat / "a.safetensors").open("ab") as handle:
        handle.write(os.urandom(4 * KiB))

    scan = scanner.scan()
    assert scanner.weight_sets.scans == scans
    probe = ResidencyProbe()
    sizes = {m.path: probe.measure(w).size_bytes for m, w in scan.available}
    assert sizes == {hub: 12 * KiB, flat: 8 * KiB}


def test_a_change_in_the_scans_clock_tick_is_caught_by_the_settling_scan(
    coarse_fs: Path,
) -> None:
    patterns = (DEFAULT_WEIGHT_PATTERNS, DEFAULT_METADATA_PATTERNS)
    for attempt in range(20):
        model = _shards(coarse_fs / f"model-{attempt}", "a.safetensors")
        cache = WeightSetCache()
        listed = model.stat()
        first = cache.get(model, *patterns)
        _shards(model, "b.safetensors")
        now = model.stat()
        if (now.st_mtime_ns, now.st_ctime_ns) == (listed.st_mtime_ns, listed.st_ctime_ns):
            break  # the directory changed within the second its stamp was taken
    else:
        pytest.fail("no change landed in the same second as its scan in 20 attempts")
    assert set(_names(first)) == {"a.safetensors"}
    # The stamps cannot tell: until the settling scan, the cache serves what it saw.
    assert set(_names(cache.get(model, *patterns))) == {"a.safetensors"}
    assert cache.scans == 1
    time.sleep(SETTLE_SECONDS)
    assert set(_names(cache.get(model, *patterns))) == {"a.safetensors", "b.safetensors"}
    assert cache.scans == 2
    # That scan came SETTLE_SECONDS after the stamps were taken and found them unchanged:
    # settled, no tick can hide a change any more.
    time.sleep(SETTLE_SECONDS)
    cache.get(model, *patterns)
    assert cache.scans == 2


@pytest.fixture
def coarse_fs(tmp_path: Path) -> Iterator[Path]:
    """A real ext4 filesystem with 128-byte inodes: its timestamps are whole seconds, like
    FAT's (2 s), old ext3's or some file servers'."""
    require_root("mounts a loop filesystem")
    mkfs = require_binary("mkfs.ext4")
    image, mountpoint = tmp_path / "coarse.img", tmp_path / "coarse"
    with image.open("wb") as handle:
        handle.truncate(16 << 20)
    subprocess.run([mkfs, "-q", "-F", "-I", "128", str(image)], check=True, capture_output=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_the_backstop_scans_again_and_spreads_the_models(tmp_path: Path) -> None:
    model = _shards(tmp_path / "m", "a.safetensors")
    patterns = (DEFAULT_WEIGHT_PATTERNS, DEFAULT_METADATA_PATTERNS)
    expired = WeightSetCache(max_age_seconds=0, settle_seconds=0)
    for _ in range(3):
        expired.get(model, *patterns)
    assert expired.scans == 3
    spread = WeightSetCache(max_age_seconds=100)
    ages = [spread._max_age(tmp_path / f"model-{i}") for i in range(200)]
    assert min(ages) >= 50
    assert max(ages) <= 100
    assert max(ages) - min(ages) > 40  # spread over the range, not one age for all


def test_models_no_longer_watched_are_forgotten(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _shards(models / "a", "x.safetensors")
    _shards(models / "b", "x.safetensors")
    scanner = ModelScanner(ModelSources(models_dir=models))
    scanner.scan()
    assert len(scanner.weight_sets._known) == 2
    (models / "b").rename(tmp_path / "b-gone")
    assert [m.name for m in scanner.scan().models] == ["a"]
    assert len(scanner.weight_sets._known) == 1
