"""Weight sets kept between collections only while provably unchanged: every kind of change
to a model's tree makes the next collection scan it again."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from exporter.models import ModelScanner, ModelSources
from exporter.weightset_cache import RACY_NANOSECONDS
from tests.support import write_random

KiB = 1 << 10


def _shards(root: Path, *names: str) -> Path:
    for name in names:
        write_random(root / name, 4 * KiB)
    return root


def _hf(root: Path) -> Path:
    for revision in ("rev1", "rev2"):
        blob = write_random(root / "blobs" / revision, 4 * KiB)
        snapshot = root / "snapshots" / revision
        snapshot.mkdir(parents=True)
        (snapshot / f"{revision}.safetensors").symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("rev1")
    return root


def _repoint(link: Path, target: Path) -> None:
    """ln -sfn: a new link renamed over the old one."""
    temporary = link.with_name(link.name + ".new")
    temporary.symlink_to(target)
    temporary.replace(link)


def test_an_unchanged_tree_is_not_scanned_again_and_any_change_is_seen(tmp_path: Path) -> None:
    target = write_random(tmp_path / "elsewhere" / "b.safetensors", 8 * KiB)
    linked = _shards(tmp_path / "linked", "a.safetensors")
    (linked / "b.safetensors").symlink_to(target)
    changes: dict[str, tuple[Path, Callable[[Path], None], set[str]]] = {
        "added": (
            _shards(tmp_path / "added", "a.safetensors"),
            lambda m: _shards(m, "b.safetensors") and None,
            {"a.safetensors", "b.safetensors"},
        ),
        "renamed": (
            _shards(tmp_path / "renamed", "a.safetensors"),
            lambda m: (m / "a.safetensors").rename(m / "z.safetensors") and None,
            {"z.safetensors"},
        ),
        "nested": (
            _shards(tmp_path / "nested", "a.safetensors", "sub/keep.json"),
            lambda m: _shards(m / "sub", "deep.safetensors") and None,
            {"a.safetensors", "sub/deep.safetensors"},
        ),
        "relinked": (
            linked,
            lambda m: _repoint(m / "b.safetensors", m / "a.safetensors"),
            {"b.safetensors"},  # b now points at a: one inode, counted once
        ),
        "revision": (
            _hf(tmp_path / "models--org--hf"),
            lambda m: (m / "refs" / "main").write_text("rev2") and None,
            {"rev2.safetensors"},
        ),
    }
    # Let the directories' change times age past the coarse-clock window.
    time.sleep(RACY_NANOSECONDS / 1e9 + 0.1)
    scanner = ModelScanner(ModelSources.of([m for m, _, _ in changes.values()]))
    scanner.scan()
    scans = scanner.weight_sets.scans
    assert scans == len(changes)
    scanner.scan()
    assert scanner.weight_sets.scans == scans  # nothing changed: nothing scanned

    for model, change, _ in changes.values():
        change(model)
    found = {
        m.path: {str(f.path.relative_to(w.root)) for f in w.files}
        for m, w in scanner.scan().available
    }
    assert scanner.weight_sets.scans == scans + len(changes)
    for kind, (model, _, expected) in changes.items():
        assert found[model] == expected, kind


def test_models_no_longer_watched_are_forgotten(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _shards(models / "a", "x.safetensors")
    _shards(models / "b", "x.safetensors")
    time.sleep(RACY_NANOSECONDS / 1e9 + 0.1)
    scanner = ModelScanner(ModelSources(models_dir=models))
    scanner.scan()
    assert len(scanner.weight_sets._known) == 2
    (models / "b").rename(tmp_path / "b-gone")
    assert [m.name for m in scanner.scan().models] == ["a"]
    assert len(scanner.weight_sets._known) == 1
