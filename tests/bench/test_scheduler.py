"""The I/O scheduler experiment against a real kernel scheduler file: the sysfs queue of a
loop device the test attaches, placed in a fake sysfs tree under the model's real device
number. The kernel lists every scheduler with the active one in brackets, selects one by
name and refuses an unknown name with EINVAL, so a switch and a restore are what they are
on the model's disk. Switching, restoring at the end, on SIGTERM and after a SIGKILL
through the journal; and the refusal without permission."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.linux.mountinfo import mount_for_path, read_mounts
from exporter.samples import Mode, read_all
from tests.support import NOBODY_UID, REPO, pagewarm, require_binary, require_root

ORIGINAL = "kyber"  # what the loop device's scheduler is set to before each test


@pytest.fixture
def loop_queue(tmp_path: Path) -> Iterator[Path]:
    """The sysfs queue of a loop device over a small file of the test's own (nothing else
    uses it), scheduler set to ORIGINAL; detached afterwards."""
    require_root("attaching a loop device and switching its I/O scheduler")
    losetup = require_binary("losetup")
    backing = tmp_path / "loop.img"
    with backing.open("wb") as handle:
        handle.truncate(1 << 20)
    attached = subprocess.run(
        [losetup, "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if attached.returncode != 0:
        pytest.skip(f"no loop device to attach: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        queue = Path("/sys/block") / Path(device).name / "queue"
        (queue / "scheduler").write_text(ORIGINAL)
        yield queue
    finally:
        subprocess.run([losetup, "--detach", device], check=True)


def _fake_sysfs(root: Path, model: Path, queue: Path) -> Path:
    """sysfs with dev/block/M:m -> block/fakedisk for the mount that holds ``model``, whose
    queue is the loop device's real one."""
    mount = mount_for_path(model, read_mounts())
    assert mount is not None
    assert mount.major != 0, f"{model} is on {mount.fstype}: the fixture puts it on a disk"
    disk = root / "block" / "fakedisk"
    disk.mkdir(parents=True)
    (disk / "queue").symlink_to(queue)
    devices = root / "dev" / "block"
    devices.mkdir(parents=True)
    (devices / f"{mount.major}:{mount.minor}").symlink_to("../../block/fakedisk")
    return disk / "queue" / "scheduler"


def _env(tmp_path: Path, sysfs: Path) -> dict[str, str]:
    return {
        "PAGEWARM_SYSFS_ROOT": str(sysfs),
        "PAGEWARM_SCHEDULER_JOURNAL": str(tmp_path / "journal.json"),
        "PAGEWARM_SAMPLES": str(tmp_path / "samples.jsonl"),
    }


def _current(scheduler_file: Path) -> str:
    """The active scheduler; every offered one is still listed (as sysfs shows them)."""
    names = scheduler_file.read_text().split()
    [active] = [n[1:-1] for n in names if n.startswith("[") and n.endswith("]")]
    assert {n.strip("[]") for n in names} >= {"none", "mq-deadline", "kyber"}, names
    return active


def test_switches_runs_cold_and_warm_under_each_and_restores(
    small_model: Path, tmp_path: Path, loop_queue: Path
) -> None:
    scheduler_file = _fake_sysfs(tmp_path / "sys", small_model, loop_queue)
    listing = scheduler_file.read_text()
    env = _env(tmp_path, tmp_path / "sys")
    result = pagewarm(
        "bench",
        small_model,
        "--schedulers",
        "none,mq-deadline",
        "--runs",
        "2",
        "--seed",
        "3",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    samples = read_all(tmp_path / "samples.jsonl")
    cells = sorted((s.scheduler or "", str(s.mode)) for s in samples)
    assert cells == sorted(
        [(sched, mode) for sched in ("mq-deadline", "none") for mode in ("cold", "warm")] * 2
    )
    assert all(s.device == "fakedisk" for s in samples)
    assert all(s.mode_verified for s in samples)
    assert "scheduler experiment on fakedisk" in (samples[0].scheduler_note or "")
    assert scheduler_file.read_text() == listing  # restored, every scheduler still listed
    assert not (tmp_path / "journal.json").exists()
    show = pagewarm("scheduler", "show", small_model, env=env)
    assert "fakedisk: kyber" in show.stdout
    assert "switchable here: yes" in show.stdout


def test_unknown_scheduler_is_refused_before_anything_changes(
    small_model: Path, tmp_path: Path, loop_queue: Path
) -> None:
    scheduler_file = _fake_sysfs(tmp_path / "sys", small_model, loop_queue)
    listing = scheduler_file.read_text()
    env = _env(tmp_path, tmp_path / "sys")
    result = pagewarm("bench", small_model, "--schedulers", "none,cfq", env=env)
    assert result.returncode == 2
    assert "cfq not offered" in result.stderr
    assert scheduler_file.read_text() == listing
    assert not (tmp_path / "samples.jsonl").exists()


# A "load" that reports the scheduler it ran under, then hangs until it is killed.
HANG = """
import os, sys, time
from pathlib import Path
active = [n[1:-1] for n in Path(sys.argv[1]).read_text().split() if n.startswith("[")]
Path(sys.argv[2]).write_text(active[0] + "\\n" + str(os.getpid()))
time.sleep(600)
"""


def _bench_until_loading(
    small_model: Path, tmp_path: Path, env: dict[str, str], scheduler_file: Path
) -> tuple[subprocess.Popen[str], int]:
    marker = tmp_path / "loading"
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "--log-format",
            "json",
            "bench",
            str(small_model),
            "--schedulers",
            "none,mq-deadline",
            "--runs",
            "1",
            "--",
            sys.executable,
            "-c",
            HANG,
            str(scheduler_file),
            str(marker),
        ],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() or len(marker.read_text().splitlines()) < 2:
        assert bench.poll() is None, bench.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    seen, pid = marker.read_text().splitlines()
    assert seen in ("none", "mq-deadline")  # the load ran under a switched scheduler
    return bench, int(pid)


def test_sigkill_mid_experiment_is_repaired_from_the_journal(
    small_model: Path, tmp_path: Path, loop_queue: Path
) -> None:
    scheduler_file = _fake_sysfs(tmp_path / "sys", small_model, loop_queue)
    listing = scheduler_file.read_text()
    env = _env(tmp_path, tmp_path / "sys")
    bench, load_pid = _bench_until_loading(small_model, tmp_path, env, scheduler_file)
    bench.kill()  # SIGKILL: no handler, no finally
    bench.wait(30)
    os.kill(load_pid, signal.SIGKILL)  # the orphaned "load" of the killed bench
    bench.communicate(timeout=30)  # its pipes close with the orphan
    assert _current(scheduler_file) in ("none", "mq-deadline")  # left switched
    assert (tmp_path / "journal.json").exists()

    # A new experiment refuses to start on top of the leftover (its "original" would be
    # the switched value).
    refused = pagewarm("bench", small_model, "--schedulers", "none", "--runs", "1", env=env)
    assert refused.returncode == 2
    assert "pagewarm scheduler restore" in refused.stderr
    show = pagewarm("scheduler", "show", small_model, env=env)
    assert "PENDING" in show.stdout

    restored = pagewarm("scheduler", "restore", env=env)
    assert restored.returncode == 0, restored.stderr
    assert "fakedisk: restored to kyber" in restored.stdout
    assert scheduler_file.read_text() == listing
    assert not (tmp_path / "journal.json").exists()
    again = pagewarm("scheduler", "restore", env=env)
    assert (again.returncode, "nothing to restore" in again.stdout) == (0, True)


def test_sigterm_mid_experiment_restores_and_stops_the_load(
    small_model: Path, tmp_path: Path, loop_queue: Path
) -> None:
    scheduler_file = _fake_sysfs(tmp_path / "sys", small_model, loop_queue)
    listing = scheduler_file.read_text()
    env = _env(tmp_path, tmp_path / "sys")
    bench, load_pid = _bench_until_loading(small_model, tmp_path, env, scheduler_file)
    bench.send_signal(signal.SIGTERM)
    _out, err = bench.communicate(timeout=60)
    assert bench.returncode == 128 + signal.SIGTERM, err
    assert scheduler_file.read_text() == listing
    assert not (tmp_path / "journal.json").exists()
    assert "I/O scheduler restored" in err
    with pytest.raises(ProcessLookupError):
        os.kill(load_pid, 0)  # the load's process group was stopped too


def test_without_permission_it_runs_under_the_current_scheduler_and_says_so(
    small_model: Path, shared_tmp: Path, loop_queue: Path
) -> None:
    require_root("runs the bench as user nobody against a root-owned scheduler file")
    model = shared_tmp / "model"
    shutil.copytree(small_model, model)
    scheduler_file = _fake_sysfs(shared_tmp / "sys", model, loop_queue)
    listing = scheduler_file.read_text()
    state = shared_tmp / "state"
    state.mkdir()
    os.chown(state, NOBODY_UID, NOBODY_UID)
    env = _env(state, shared_tmp / "sys")
    result = pagewarm(
        "bench",
        model,
        "--schedulers",
        "none,mq-deadline",
        "--runs",
        "1",
        "--modes",
        "cold,warm",
        "--seed",
        "1",
        env={**env, "HOME": str(state)},
        user=NOBODY_UID,
    )
    assert result.returncode == 0, result.stderr
    assert "would have tested none, mq-deadline" in result.stdout
    samples = read_all(state / "samples.jsonl")
    assert len(samples) == 2
    assert {s.scheduler for s in samples} == {ORIGINAL}
    assert all("not writable" in (s.scheduler_note or "") for s in samples)
    # As nobody, residency of root's files cannot be trusted: unverified, never faked.
    assert all(s.mode_verified is None and s.resident_ratio_before is None for s in samples)
    assert {s.mode for s in samples} == {Mode.COLD, Mode.WARM}
    assert scheduler_file.read_text() == listing


def test_a_name_the_kernel_refuses_is_not_restored_and_the_journal_stays(
    small_model: Path, tmp_path: Path, loop_queue: Path
) -> None:
    scheduler_file = _fake_sysfs(tmp_path / "sys", small_model, loop_queue)
    listing = scheduler_file.read_text()
    with pytest.raises(OSError, match="Invalid argument") as refused:
        scheduler_file.write_text("cfq")  # gone from the kernel since 5.0
    assert refused.value.errno == errno.EINVAL
    # A journal whose original the kernel no longer offers (written on another kernel):
    journal = tmp_path / "journal.json"
    entry = {"device": "fakedisk", "path": str(scheduler_file), "original": "cfq"}
    journal.write_text(json.dumps({"pid": 1 << 22, "started": "then", "entries": [entry]}))
    env = _env(tmp_path, tmp_path / "sys")
    result = pagewarm("scheduler", "restore", env=env)
    assert result.returncode == 1, result.stderr
    assert "fakedisk: NOT restored to cfq" in result.stdout
    assert "Invalid argument" in result.stdout
    assert journal.exists()  # kept for another try
    assert scheduler_file.read_text() == listing
