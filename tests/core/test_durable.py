"""Durable writes on a real filesystem: whole or not at all, nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controller.linux.durable import fsync_directory, write_atomically


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "features.d" / "pagewarm"  # the directory is created
    write_atomically(target, b"first\n")
    write_atomically(target, b"second\n")
    assert target.read_bytes() == b"second\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["pagewarm"]


def test_the_mode_is_masked_by_the_umask_as_open_does(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        write_atomically(tmp_path / "shared", b"x")
        write_atomically(tmp_path / "private", b"x", mode=0o600)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_a_failed_rename_keeps_the_old_content_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"old")  # a non-empty directory cannot be replaced
    with pytest.raises(OSError, match="taken"):
        write_atomically(target, b"new")
    assert (target / "inside").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_fsync_directory_refuses_a_file(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_directory(regular)
    fsync_directory(tmp_path)  # a directory: no error
