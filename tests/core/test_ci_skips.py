"""Under CI every skip is a failure with its reason (tests/ci_skips.py), checked on a real
pytest run of probe tests that skip in each way a test can."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, in_ci

PROBES = """
import pytest

def test_skip():
    pytest.skip("reason-call")

@pytest.mark.skipif(True, reason="reason-mark")
def test_skipif():
    pass

@pytest.fixture
def resource():
    pytest.skip("reason-fixture")

def test_fixture(resource):
    pass

@pytest.mark.xfail(reason="reason-xfail", strict=True)
def test_xfail():
    raise AssertionError

def test_passes():
    pass
"""
MODULE_SKIP = """
import pytest
pytest.importorskip("pagewarm_no_such_module")

def test_never_collected():
    pass
"""


def _run_probe(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-p", "tests.ci_skips", "-p", "no:cacheprovider"]
    argv += ["-q", "-rA", "--rootdir", str(tmp_path), str(probe)]
    return subprocess.run(
        argv,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("ci", ["true", "1", "yes", "TRUE", " Yes "])
def test_under_ci_each_kind_of_skip_fails_with_its_reason(tmp_path: Path, ci: str) -> None:
    assert in_ci({"CI": ci}) is True
    result = _run_probe(tmp_path, PROBES, ci)
    assert result.returncode == 1, result.stdout
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("1 failed, 1 passed, 1 xfailed, 2 errors"), result.stdout
    for reason in ("reason-call", "reason-mark", "reason-fixture"):
        assert f"Skipped: {reason} (a skip is a failure under CI={ci})" in result.stdout
    assert "skipped" not in summary


def test_under_ci_a_skipped_module_fails_the_collection(tmp_path: Path) -> None:
    result = _run_probe(tmp_path, MODULE_SKIP, "1")
    assert result.returncode == 2, result.stdout  # interrupted: a collection error
    assert "could not import 'pagewarm_no_such_module'" in result.stdout
    assert "a skip is a failure under CI=1" in result.stdout


@pytest.mark.parametrize("ci", [None, "", "0", "false", "no"])
def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path, ci: str | None) -> None:
    result = _run_probe(tmp_path, PROBES, ci)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1].startswith("1 passed, 3 skipped, 1 xfailed")
    assert in_ci({} if ci is None else {"CI": ci}) is False
