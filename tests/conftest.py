"""Fixtures shared by every test, and the CI rule: under CI every skip is a failure."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.synth import synth
from tests.ci_skips import (  # noqa: F401 - hooks, found by pytest in this module
    pytest_make_collect_report,
    pytest_runtest_makereport,
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pagewarm-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Llama-shaped safetensors model of about 64 MiB in 4 shards."""
    path = tmp_path_factory.mktemp("model") / "small"
    synth(path, 64 << 20, shards=4)
    return path
