"""Fixtures of the start-up profile tests: a synthetic site-packages the engine imports,
and a small model beside it, both on the same disk (/var/tmp)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.synth import synth
from tests.engine import libtree

# A quarter of the benchmark's tree: 300 imported modules, 150 never imported, three
# shared objects of 24 MiB.
TEST_SHAPE = libtree.TreeShape().scaled(0.25)


@pytest.fixture(scope="session")
def tree() -> Iterator[libtree.Tree]:
    path = Path(tempfile.mkdtemp(prefix="pagewarm-tree-", dir="/var/tmp"))
    path.chmod(0o755)
    yield libtree.build(path, TEST_SHAPE)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def engine_model() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pagewarm-engine-model-", dir="/var/tmp"))
    synth(path / "model", 96 << 20, shards=2)
    yield path / "model"
    shutil.rmtree(path, ignore_errors=True)
