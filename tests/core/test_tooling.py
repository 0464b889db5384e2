"""The install steps of `make test` on a fresh machine, with stand-ins for what would
change the host or reach a registry (apt-get, npm, pip): a minimal Debian has no unzip,
may have no npm, and under CI a torch that cannot be installed must stop the run."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO, require_binary

TOOLS = {  # what the npm package's zip carries
    "helm": b"#!/bin/sh\necho 'version.BuildInfo{Version:\"v4.0.0\"}'\n",
    "kubectl": b"#!/bin/sh\necho 'Client Version: v1.33.0'\n",
}
# What the script needs from the system, and python3: no unzip among them.
SYSTEM_COMMANDS = ("bash", "env", "dirname", "mktemp", "tar", "gzip", "mkdir", "install", "rm")
PRESENT_TOOLS = ("prometheus", "promtool", "fio", "vmtouch", "fincore", "setpriv", "unshare")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def _helm_package(path: Path) -> None:
    """The npm package's tarball: package/lib/layer.zip holding helm/helm, kubectl/kubectl."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as archive:
        archive.writestr("README", "not a tool")
        for name, content in TOOLS.items():
            archive.writestr(f"{name}/{name}", content)
    with tarfile.open(path, "w:gz") as tarball:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tarball.addfile(info, io.BytesIO(layer.getvalue()))


def _which(name: str) -> str:
    found = shutil.which(name)
    assert found is not None, f"{name} is not on this machine"
    return found


def _fresh_machine(tmp_path: Path, *, uid: int, npm: bool) -> tuple[Path, dict[str, str]]:
    """A checkout whose .tools is empty, and a PATH of only the commands named here."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "install-tools.sh", root / "scripts")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in SYSTEM_COMMANDS:
        (bin_dir / name).symlink_to(_which(name))
    (bin_dir / "python3").symlink_to(Path(sys.base_prefix) / "bin" / "python3")  # no shim
    for name in PRESENT_TOOLS:
        _script(bin_dir / name, "exit 0\n")
    _script(bin_dir / "id", f"echo {uid}\n")
    # npm: `npm pack` leaves the package's tarball in the working directory.
    _helm_package(tmp_path / "package.tgz")
    npm_command = tmp_path / "npm"
    _script(
        npm_command,
        f"[[ $1 == pack ]] && {_which('cp')} {tmp_path}/package.tgz . && echo package.tgz\n",
    )
    if npm:
        (bin_dir / "npm").symlink_to(npm_command)
    # apt-get: records its arguments; installing npm puts npm on the PATH.
    _script(
        bin_dir / "apt-get",
        f'echo "$*" >> {tmp_path}/apt.log\n'
        f'[[ $1 == install && " $* " == *" npm "* ]] && '
        f"{_which('ln')} -s {npm_command} {bin_dir}/npm\n"
        "exit 0\n",
    )
    return root, {"PATH": str(bin_dir), "HOME": str(tmp_path)}


def _install_tools(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "install-tools.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _installed(root: Path) -> dict[str, bytes]:
    """The tools in the checkout's .tools/bin (each must be executable)."""
    found = {}
    for tool in sorted((root / ".tools" / "bin").iterdir()):
        assert stat.S_IMODE(tool.stat().st_mode) == 0o755, tool
        found[tool.name] = tool.read_bytes()
    return found


def test_helm_and_kubectl_are_unpacked_without_unzip(tmp_path: Path) -> None:
    root, env = _fresh_machine(tmp_path, uid=1000, npm=True)
    assert shutil.which("unzip", path=env["PATH"]) is None
    result = _install_tools(root, env)
    assert result.returncode == 0, result.stderr
    assert _installed(root) == TOOLS
    assert not (tmp_path / "apt.log").exists()  # everything else was there
    again = _install_tools(root, env)  # idempotent: nothing to do the second time
    assert (again.returncode, again.stderr) == (0, "")


def test_without_npm_root_installs_it_with_apt(tmp_path: Path) -> None:
    root, env = _fresh_machine(tmp_path, uid=0, npm=False)
    result = _install_tools(root, env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "apt.log").read_text().splitlines() == [
        "update -qq",
        "install -y -qq --no-install-recommends npm",
    ]
    assert _installed(root) == TOOLS


def test_without_npm_a_user_is_told_exactly_what_to_install(tmp_path: Path) -> None:
    root, env = _fresh_machine(tmp_path, uid=1000, npm=False)
    result = _install_tools(root, env)
    assert result.returncode == 0, result.stderr
    assert "run as root, or: sudo apt-get install npm" in result.stderr
    assert "helm kubectl not installed (install npm, then run make tools again)" in result.stderr
    assert not (tmp_path / "apt.log").exists()
    assert not (root / ".tools" / "bin" / "helm").exists()


@pytest.mark.parametrize(("ci", "fails"), [("true", True), ("1", True), ("", False)])
def test_make_stops_when_torch_cannot_be_installed_under_ci(
    tmp_path: Path, ci: str, fails: bool
) -> None:
    make = require_binary("make")
    venv = tmp_path / "venv"
    venv.mkdir()
    pip = tmp_path / "python"  # every pip install succeeds except torch's
    _script(pip, 'if [[ " $* " == *torch* ]]; then echo "no torch here" >&2; exit 1; fi\n')
    result = subprocess.run(
        [make, "-s", f"VENV={venv}", "PYTHON=true", f"PY={pip}", f"{venv}/.installed"],
        cwd=REPO,
        env={**os.environ, "CI": ci},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if fails:
        assert result.returncode != 0
        assert "error: torch 2.13.0+cpu not installed; CI runs the torch loader tests" in (
            result.stderr
        )
        assert not (venv / ".installed").exists()
    else:
        assert result.returncode == 0, result.stderr
        assert "the torch loader tests skip" in result.stdout
        assert (venv / ".installed").exists()
