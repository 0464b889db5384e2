"""The profile command line (record without root, show, bad input), prewarm --profile, the
sidecar's flags, and where the recorder looks (library roots)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from controller.profile import roots
from controller.profile.schema import load
from exporter.linux.files import FileRoot
from tests.support import NOBODY_UID, pagewarm

MiB = 1 << 20
READER = (
    "import os, sys\n"
    "for n in sorted(os.listdir(sys.argv[1])): open(os.path.join(sys.argv[1], n), 'rb').read()"
)
# The engine of the test run as another user: the system's interpreter (this one may live
# where that user cannot go).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"


@pytest.mark.root
def test_record_without_root_then_replay_with_prewarm(shared_tmp: Path, small_model: Path) -> None:
    libs = shared_tmp / "libs"
    libs.mkdir()
    for index in range(4):
        (libs / f"m{index}.pyc").write_bytes(os.urandom(MiB))
    os.sync()
    for path in [libs, *libs.iterdir()]:
        os.chown(path, NOBODY_UID, NOBODY_UID)  # the engine's user owns its files
    out = shared_tmp / "p.json.gz"
    os.chown(shared_tmp, NOBODY_UID, NOBODY_UID)
    env = {"PYTHONPATH": str(libs)}
    evicted = pagewarm("evict", libs, env=env)  # no weights there: nothing to evict
    assert evicted.returncode in (0, 2)
    for path in libs.iterdir():
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

    recorded = pagewarm(
        "profile", "record", "--model-name", "tiny", "--out", out, "--interval", "0.05",
        "--json", "--", SYSTEM_PYTHON, "-c", READER, libs,
        env=env, user=NOBODY_UID,
    )  # fmt: skip
    assert recorded.returncode == 0, recorded.stderr
    summary = json.loads(recorded.stdout)
    assert summary["recording"]["method"] == "residency"  # truthful as the files' owner
    profile = load(out)
    assert {str(p) for p in libs.iterdir()} <= {e.path for e in profile.entries}

    shown = pagewarm("profile", "show", out)
    assert shown.returncode == 0
    assert f"profile {Path(SYSTEM_PYTHON).name} tiny" in shown.stdout

    for path in libs.iterdir():
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    warmed = pagewarm("prewarm", small_model, "--profile", out, "--json")
    assert warmed.returncode == 0, warmed.stderr
    replay = json.loads(warmed.stdout)["startup_profile"]
    assert replay["replayed_entries"] == profile.totals.entries
    assert replay["read_bytes"] >= 0.95 * 4 * MiB


def test_bad_input_exits_2_with_the_reason(shared_tmp: Path, small_model: Path) -> None:
    no_command = pagewarm("profile", "record", "--model-name", "m", "--out", shared_tmp / "p")
    assert no_command.returncode == 2
    assert "after --" in no_command.stderr
    bad = shared_tmp / "bad.json"
    bad.write_text("[]")
    shown = pagewarm("profile", "show", bad)
    assert shown.returncode == 2
    assert "not a start-up profile" in shown.stderr
    warmed = pagewarm("prewarm", small_model, "--profile", bad)
    assert warmed.returncode == 2
    assert "not a start-up profile" in warmed.stderr
    depth = pagewarm("sidecar", small_model, "--io-depth", "0")
    assert depth.returncode == 2
    assert "--io-depth 0" in depth.stderr
    failed = pagewarm(
        "profile", "record", "--model-name", "m", "--out", shared_tmp / "p", "--",
        sys.executable, "-c", "raise SystemExit(4)",
    )  # fmt: skip
    assert failed.returncode == 1
    assert "status 4" in failed.stderr
    assert not (shared_tmp / "p").exists()


def test_library_roots() -> None:
    site = "/opt/venv/lib/python3.12/site-packages"
    assert roots.library_root(f"{site}/torch/lib/libtorch.so") == site
    assert roots.library_root("/usr/lib/python3.12/lib-dynload/_ssl.so") == "/usr/lib/python3.12"
    assert roots.library_root("/usr/lib/x86_64-linux-gnu/libc.so.6") is None
    assert roots.within(f"{site}/a", site) and not roots.within("/opt/venv2", "/opt/venv")


def test_a_virtual_environment_is_watched_instead_of_the_base_site_packages(
    tmp_path: Path,
) -> None:
    base = tmp_path / "usr"
    (base / "bin").mkdir(parents=True)
    (base / "lib" / "python3.12" / "site-packages").mkdir(parents=True)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib" / "python3.12" / "site-packages").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("include-system-site-packages = false\n")
    (venv / "bin" / "python3").touch()
    with FileRoot("/") as root:
        found = roots.python_roots(
            root,
            str(base / "bin" / "python3.12"),
            "python3",
            {"PATH": f"{venv / 'bin'}:/usr/bin", "PYTHONPATH": f"{tmp_path}:relative"},
        )
    # argv[0] found on the engine's PATH is the virtual environment's: its site-packages,
    # the base's standard library (not the base's site-packages), PYTHONPATH.
    assert found[:2] == [
        str(venv / "lib" / "python3.12" / "site-packages"),
        str(base / "lib" / "python3.12"),
    ]
    assert str(tmp_path) in found
    assert str(base / "lib" / "python3.12" / "site-packages") not in found
    assert "relative" not in found
