"""The weight set over real trees: HF cache links, hard links, loops, FIFOs, sockets."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from exporter.weightset import FileRole, ModelPathError, SkipReason, discover
from tests.support import NOBODY_UID, pagewarm, write_random


def _hf_cache_entry(root: Path, revisions: dict[str, list[str]], main: str) -> Path:
    """models--org--name with blobs/, refs/main and snapshots/<rev>/ links into blobs."""
    entry = root / "models--org--tiny"
    blobs = entry / "blobs"
    for rev, names in revisions.items():
        snap = entry / "snapshots" / rev
        snap.mkdir(parents=True)
        for name in names:
            blob = write_random(blobs / f"{rev}-{name}.sha", 4096)
            (snap / name).symlink_to(os.path.relpath(blob, snap))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(main)
    return entry


def test_hf_cache_layout_follows_links_to_blobs_of_the_main_revision(tmp_path: Path) -> None:
    entry = _hf_cache_entry(
        tmp_path,
        {"old": ["model.safetensors"], "new": ["model-1.safetensors", "model-2.safetensors"]},
        main="new",
    )
    ws = discover(entry)
    assert ws.root == entry / "snapshots" / "new"
    assert [f.path.name for f in ws.files] == ["model-1.safetensors", "model-2.safetensors"]
    assert all(f.real_path.parent == entry / "blobs" for f in ws.files)
    assert ws.total_bytes == 2 * 4096


def test_hard_links_and_duplicate_links_count_once(tmp_path: Path) -> None:
    shard = write_random(tmp_path / "a.safetensors", 8192)
    os.link(shard, tmp_path / "b.safetensors")
    (tmp_path / "c.safetensors").symlink_to("a.safetensors")
    ws = discover(tmp_path)
    assert len(ws.files) == 1
    assert ws.total_bytes == 8192
    assert sorted(s.reason for s in ws.skipped) == [SkipReason.DUPLICATE, SkipReason.DUPLICATE]


@pytest.mark.timeout(10)
def test_fifo_socket_and_device_are_skipped_without_opening(tmp_path: Path) -> None:
    write_random(tmp_path / "real.safetensors", 4096)
    os.mkfifo(tmp_path / "fifo.safetensors")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.safetensors"))
        (tmp_path / "null.bin").symlink_to("/dev/null")
        ws = discover(tmp_path, prefer_safetensors=False)
    assert [f.path.name for f in ws.files] == ["real.safetensors"]
    details = {s.path.name: (s.reason, s.detail) for s in ws.skipped}
    assert details["fifo.safetensors"][0] is SkipReason.NOT_REGULAR
    assert "FIFO" in details["fifo.safetensors"][1]
    assert "socket" in details["sock.safetensors"][1]
    assert "character device" in details["null.bin"][1]


def test_link_loops_and_directory_loops_are_reported(tmp_path: Path) -> None:
    write_random(tmp_path / "ok.safetensors", 4096)
    (tmp_path / "x.safetensors").symlink_to("y.safetensors")
    (tmp_path / "y.safetensors").symlink_to("x.safetensors")
    (tmp_path / "gone.safetensors").symlink_to("nowhere")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")
    ws = discover(tmp_path)
    assert [f.path.name for f in ws.files] == ["ok.safetensors"]
    reasons = {s.path.name: s.reason for s in ws.skipped}
    assert reasons["x.safetensors"] is SkipReason.LINK_LOOP
    assert reasons["y.safetensors"] is SkipReason.LINK_LOOP
    assert reasons["gone.safetensors"] is SkipReason.BROKEN_LINK
    assert reasons["up"] is SkipReason.DIRECTORY_LOOP


def test_missing_path_and_fifo_root_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelPathError, match="does not exist"):
        discover(tmp_path / "nope")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ModelPathError, match="is a FIFO"):
        discover(tmp_path / "fifo")


def test_load_order_follows_the_index_then_names(tmp_path: Path) -> None:
    for name in ("model-a.safetensors", "model-b.safetensors", "model-c.safetensors"):
        write_random(tmp_path / name, 4096)
    index = {"weight_map": {"w1": "model-c.safetensors", "w2": "model-a.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("not part of the model")
    ws = discover(tmp_path)
    assert [f.path.name for f in ws.files] == [
        "config.json",
        "model.safetensors.index.json",
        "model-c.safetensors",
        "model-a.safetensors",
        "model-b.safetensors",
    ]
    assert [f.role for f in ws.files[:2]] == [FileRole.METADATA, FileRole.METADATA]


def test_other_formats_beside_safetensors_are_left_out(tmp_path: Path) -> None:
    write_random(tmp_path / "model.safetensors", 4096)
    write_random(tmp_path / "original" / "consolidated.00.pth", 4096)
    ws = discover(tmp_path)
    assert [f.path.name for f in ws.files] == ["model.safetensors"]
    assert [s.reason for s in ws.skipped] == [SkipReason.OTHER_FORMAT]
    assert len(discover(tmp_path, prefer_safetensors=False).files) == 2


def test_a_single_file_is_a_weight_set(tmp_path: Path) -> None:
    gguf = write_random(tmp_path / "model.Q4.gguf", 4096)
    ws = discover(gguf)
    assert [f.path for f in ws.files] == [gguf]
    assert ws.display_name(ws.files[0]) == "model.Q4.gguf"


def test_unreadable_directory_is_a_counted_skip_for_an_unprivileged_user(shared_tmp: Path) -> None:
    write_random(shared_tmp / "a.safetensors", 4096)
    locked = shared_tmp / "locked"
    write_random(locked / "b.safetensors", 4096)
    locked.chmod(0o700)  # root-owned: user nobody may not list it
    result = pagewarm("status", shared_tmp, "--json", user=NOBODY_UID)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [f["file"] for f in doc["files"]] == ["a.safetensors"]
    assert doc["skipped"] == [
        {"path": str(locked), "reason": "permission_denied", "detail": doc["skipped"][0]["detail"]}
    ]
