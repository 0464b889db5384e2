"""Fixtures shared by every test, and the CI rule: under CI every skip is a failure."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.synth import synth
from tests.ci_skips import (  # noqa: F401 - hooks, found by pytest in this module
    pytest_make_collect_report,
    pytest_runtest_makereport,
)
from tests.support import disk_directory


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is private to root), on a
    block device."""
    path = disk_directory("pagewarm-test-")
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def small_model() -> Iterator[Path]:
    """A synthetic Llama-shaped safetensors model of about 64 MiB in 4 shards, on a block
    device (the device and I/O scheduler tests read it)."""
    root = disk_directory("pagewarm-model-")
    synth(root / "small", 64 << 20, shards=4)
    yield root / "small"
    shutil.rmtree(root, ignore_errors=True)
