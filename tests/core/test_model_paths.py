"""Model paths that hold no model: every command answers with one line and exit 2, never
with a figure. And the walk stays on the model's filesystem: never into /proc, /sys or
/dev, not across a link or a mount onto another filesystem unless asked, never up to a
directory that holds the model root. Real files, real pseudo-filesystems, real mounts (in a
private mount namespace, so that nothing leaks to the host's mount table)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.collectors import build_collector_set
from exporter.linux.mountinfo import read_mounts
from exporter.residency import ResidencyProbe
from exporter.settings import ExporterSettings
from exporter.weightset import SkipReason, discover
from tests.exporter.util import value
from tests.support import (
    IN_CI,
    NOBODY_UID,
    REPO,
    fill_without_weights,
    pagewarm,
    require_binary,
    require_root,
    write_random,
)

KiB = 1 << 10


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed as a user error: exit 2, nothing on stdout, one log line."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    event = json.loads(lines[0])
    assert event["level"] == "error"
    return str(event["event"])


SAFETENSORS_ONLY = {"PAGEWARM_WEIGHT_PATTERNS": '["*.safetensors"]'}


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ("nothing", "found nothing"),
        ("zero_byte_shards", "are all empty (0 bytes): model-00001-of-00002.safetensors"),
        ("fifos_only", "1 skipped, e.g. model.safetensors (not_regular_file: FIFO"),
        ("sockets_and_dead_links", "2 skipped"),
        ("metadata_only", "found 2 metadata files: config.json, model.safetensors.index.json"),
        ("bin_beside_safetensors_patterns", "1 matching no pattern: pytorch_model.bin"),
    ],
)
def test_status_of_a_model_without_weight_bytes_is_a_user_error(
    tmp_path: Path, contents: str, expected: str
) -> None:
    model = tmp_path / "model"
    fill_without_weights(model, contents)
    for extra in ((), ("--json",)):
        message = _one_error_line(pagewarm("status", model, *extra, env=SAFETENSORS_ONLY))
        assert str(model) in message
        assert expected in message
        if "all empty" not in expected:
            assert "looked for *.safetensors;" in message


@pytest.mark.parametrize("command", ["prewarm", "evict"])
def test_zero_byte_shards_are_neither_warmed_nor_evicted_as_a_success(
    tmp_path: Path, command: str
) -> None:
    model = tmp_path / "model"
    fill_without_weights(model, "zero_byte_shards")
    assert "are all empty (0 bytes)" in _one_error_line(pagewarm(command, model))


def test_a_model_only_unreadable_to_the_user_is_a_user_error(shared_tmp: Path) -> None:
    locked = shared_tmp / "locked"
    write_random(locked / "model.safetensors", 4 * KiB)
    locked.chmod(0o700)  # root-owned: user nobody may not list it
    message = _one_error_line(pagewarm("status", shared_tmp, user=NOBODY_UID))
    assert f"no weight files under {shared_tmp}" in message
    assert "1 skipped, e.g. locked (permission_denied" in message


def test_a_root_that_loops_is_a_fifo_or_an_empty_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    assert "Too many levels of symbolic links" in _one_error_line(
        pagewarm("status", tmp_path / "loop")
    )
    os.mkfifo(tmp_path / "fifo")
    assert "is a FIFO" in _one_error_line(pagewarm("status", tmp_path / "fifo"))
    assert "is a character device" in _one_error_line(pagewarm("status", "/dev/null"))
    (tmp_path / "model.gguf").touch()
    assert "model.gguf is an empty file (0 bytes)" in _one_error_line(
        pagewarm("status", tmp_path / "model.gguf")
    )


def test_weight_files_truncated_to_nothing_after_the_scan_are_unknown(tmp_path: Path) -> None:
    shard = write_random(tmp_path / "model.safetensors", 64 * KiB)
    weight_set = discover(tmp_path)
    os.truncate(shard, 0)
    residency = ResidencyProbe().measure(weight_set)
    assert residency.size_bytes == 0
    assert residency.ratio is None
    assert residency.files[0].ratio is None
    assert any("empty (0 bytes)" in reason for reason in residency.unknown_reasons)


def _cgroup2_mount() -> str:
    found = [m.mountpoint for m in read_mounts() if m.fstype == "cgroup2"]
    if not found:
        message = "no cgroup2 mount on this machine"
        if IN_CI:
            pytest.fail(f"{message}: CI has one")
        pytest.skip(message)
    return found[0]


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/proc", "proc"),
        ("/proc/self", "proc"),
        ("/proc/self/status", "proc"),  # a single "weight file" on procfs
        ("/sys", "sysfs"),
        ("/sys/kernel", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("cgroup2", "cgroup2"),
    ],
)
def test_a_model_root_on_a_pseudo_filesystem_is_refused(path: str, kind: str) -> None:
    if path == "cgroup2":
        path = _cgroup2_mount()
    if kind == "devtmpfs" and not any(m.fstype == "devtmpfs" for m in read_mounts()):
        kind = "tmpfs"  # a container's /dev: a tmpfs holding device nodes, walked, no weights
    result = pagewarm("status", path, timeout=60)
    message = _one_error_line(result)
    if kind == "tmpfs":
        assert "no weight files under /dev" in message
    else:
        assert f"model path {path} is on {kind}, a kernel pseudo-filesystem" in message


def _a_sysfs_file() -> Path:
    return next(p for p in Path("/sys/kernel").iterdir() if p.is_file())


def test_links_into_pseudo_filesystems_are_never_followed(tmp_path: Path) -> None:
    model = tmp_path / "model"
    write_random(model / "model.safetensors", 64 * KiB)
    for name, target in (("proc", "/proc"), ("sys", "/sys"), ("dev", "/dev")):
        (model / name).symlink_to(target)
    (model / "kcore.safetensors").symlink_to("/proc/self/status")
    (model / "sysfs.bin").symlink_to(_a_sysfs_file())
    result = pagewarm("status", model, "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [f["file"] for f in doc["files"]] == ["model.safetensors"]
    skipped = {Path(s["path"]).name: s["reason"] for s in doc["skipped"]}
    assert skipped["proc"] == skipped["sys"] == SkipReason.PSEUDO_FILESYSTEM
    assert skipped["kcore.safetensors"] == skipped["sysfs.bin"] == SkipReason.PSEUDO_FILESYSTEM
    # /dev is devtmpfs on a host (a kernel interface), a tmpfs in a container (another
    # filesystem): either way never walked.
    assert skipped["dev"] in (SkipReason.PSEUDO_FILESYSTEM, SkipReason.OTHER_FILESYSTEM)


def test_a_link_to_a_directory_above_the_model_root_is_a_loop(tmp_path: Path) -> None:
    model = tmp_path / "models" / "llama"
    write_random(model / "model.safetensors", 64 * KiB)
    write_random(tmp_path / "models" / "other" / "model.safetensors", 64 * KiB)
    (model / "all").symlink_to(tmp_path)
    ws = discover(model)
    assert [ws.display_name(f) for f in ws.files] == ["model.safetensors"]
    assert [(s.path.name, s.reason) for s in ws.skipped] == [("all", SkipReason.DIRECTORY_LOOP)]


def test_the_exporter_shows_a_pseudo_filesystem_root_as_absent(tmp_path: Path) -> None:
    settings = ExporterSettings(samples=tmp_path / "samples.jsonl")
    metrics = list(build_collector_set(["/proc"], settings).collect())
    assert value(metrics, "pagewarm_model_present", model="proc") == 0
    assert value(metrics, "pagewarm_model_files", model="proc") is None


def _in_private_mount_namespace(script: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a shell script as root in a mount namespace of its own: its mounts vanish with
    it, and none propagates to the host."""
    require_root("mounting a tmpfs")
    unshare = require_binary("unshare")
    return subprocess.run(
        [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script)],
        env={**os.environ, "PAGEWARM_LOG_FORMAT": "json"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_other_filesystems_are_crossed_only_when_asked(tmp_path: Path) -> None:
    model = tmp_path / "model"
    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    write_random(model / names[0], 64 * KiB)
    (model / "mounted").mkdir()  # a tmpfs is mounted here, below the root
    other = tmp_path / "other"  # and one here, reached through a directory link
    other.mkdir()
    (model / "linked").symlink_to(other)
    status = shlex.join([sys.executable, "-m", "controller.cli", "status", str(model), "--json"])
    # The exporter walks with the same rule, from the same setting.
    exporter = shlex.join([sys.executable, "-c", _EXPORTER_FILES, str(model)])
    q = shlex.quote
    script = [
        "set -e",
        f"mount -t tmpfs pagewarm-test {q(str(model / 'mounted'))}",
        f"mount -t tmpfs pagewarm-test {q(str(other))}",
        f"head -c 65536 /dev/urandom > {q(str(model / 'mounted' / names[1]))}",
        f"head -c 65536 /dev/urandom > {q(str(other / names[2]))}",
        # procfs inside the other filesystem: never walked, even when crossing is asked for.
        f"mkdir {q(str(other / 'proc'))}",
        f"mount -t proc proc {q(str(other / 'proc'))}",
        f"{status} > {q(str(tmp_path / 'default.json'))}",
        f"PAGEWARM_CROSS_FILESYSTEMS=true {status} > {q(str(tmp_path / 'crossing.json'))}",
        f"{exporter} > {q(str(tmp_path / 'exporter-default.txt'))}",
        f"PAGEWARM_CROSS_FILESYSTEMS=true {exporter} > {q(str(tmp_path / 'exporter-cross.txt'))}",
    ]
    result = _in_private_mount_namespace(script)
    assert result.returncode == 0, result.stderr
    assert not any(m.mountpoint.startswith(str(tmp_path)) for m in read_mounts())

    default = json.loads((tmp_path / "default.json").read_text())
    assert [f["file"] for f in default["files"]] == names[:1]
    assert sorted((Path(s["path"]).name, s["reason"]) for s in default["skipped"]) == [
        ("linked", "other_filesystem"),
        ("mounted", "other_filesystem"),
    ]
    assert "PAGEWARM_CROSS_FILESYSTEMS=true" in default["skipped"][0]["detail"]

    crossing = json.loads((tmp_path / "crossing.json").read_text())
    assert sorted(Path(f["file"]).name for f in crossing["files"]) == names
    assert [(Path(s["path"]).name, s["reason"]) for s in crossing["skipped"]] == [
        ("proc", "pseudo_filesystem")
    ]
    assert (tmp_path / "exporter-default.txt").read_text().split() == ["1"]
    assert (tmp_path / "exporter-cross.txt").read_text().split() == ["3"]


# Prints how many weight files the exporter's collectors see under argv[1].
_EXPORTER_FILES = """
import sys, tempfile
from pathlib import Path
from exporter.collectors import build_collector_set
from exporter.settings import ExporterSettings
from tests.exporter.util import value
settings = ExporterSettings(samples=Path(tempfile.mkdtemp()) / "samples.jsonl")
metrics = list(build_collector_set([sys.argv[1]], settings).collect())
print(int(value(metrics, "pagewarm_model_files", model=Path(sys.argv[1]).name)))
"""
