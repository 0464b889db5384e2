"""The I/O scheduler experiment against a scheduler file the test controls (a fake sysfs
tree for the model's real device number): switching, restoring at the end, on SIGTERM,
and after a SIGKILL through the journal; and the refusal without permission."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.linux.mountinfo import mount_for_path, read_mounts
from exporter.samples import Mode, read_all
from tests.support import NOBODY_UID, REPO, pagewarm, require_root

ORIGINAL = "none mq-deadline [kyber] bfq"


def _fake_sysfs(root: Path, model: Path) -> Path:
    """sysfs with dev/block/M:m -> block/fakedisk for the mount that holds ``model``."""
    mount = mount_for_path(model, read_mounts())
    assert mount is not None
    if mount.major == 0:
        pytest.skip(f"{model} is on {mount.fstype}: no block device number to fake")
    queue = root / "block" / "fakedisk" / "queue"
    queue.mkdir(parents=True)
    (queue / "scheduler").write_text(ORIGINAL + "\n")
    (queue / "read_ahead_kb").write_text("128\n")
    (queue / "rotational").write_text("0\n")
    devices = root / "dev" / "block"
    devices.mkdir(parents=True)
    (devices / f"{mount.major}:{mount.minor}").symlink_to("../../block/fakedisk")
    return queue / "scheduler"


def _env(tmp_path: Path, sysfs: Path) -> dict[str, str]:
    return {
        "PAGEWARM_SYSFS_ROOT": str(sysfs),
        "PAGEWARM_SCHEDULER_JOURNAL": str(tmp_path / "journal.json"),
        "PAGEWARM_SAMPLES": str(tmp_path / "samples.jsonl"),
    }


def _current(scheduler_file: Path) -> str:
    names = scheduler_file.read_text().split()
    bracketed = [n.strip("[]") for n in names if n.startswith("[")]
    return bracketed[0] if bracketed else names[0]


def test_switches_runs_cold_and_warm_under_each_and_restores(
    small_model: Path, tmp_path: Path
) -> None:
    scheduler_file = _fake_sysfs(tmp_path / "sys", small_model)
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
    assert _current(scheduler_file) == "kyber"  # restored
    assert not (tmp_path / "journal.json").exists()
    show = pagewarm("scheduler", "show", small_model, env=env)
    assert "fakedisk: kyber" in show.stdout
    assert "switchable here: yes" in show.stdout


def test_unknown_scheduler_is_refused_before_anything_changes(
    small_model: Path, tmp_path: Path
) -> None:
    scheduler_file = _fake_sysfs(tmp_path / "sys", small_model)
    env = _env(tmp_path, tmp_path / "sys")
    result = pagewarm("bench", small_model, "--schedulers", "none,cfq", env=env)
    assert result.returncode == 2
    assert "cfq not offered" in result.stderr
    assert scheduler_file.read_text().strip() == ORIGINAL
    assert not (tmp_path / "samples.jsonl").exists()


# A "load" that reports the scheduler it ran under, then hangs until it is killed.
HANG = """
import os, sys, time
from pathlib import Path
Path(sys.argv[2]).write_text(Path(sys.argv[1]).read_text().strip() + "\\n" + str(os.getpid()))
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
    small_model: Path, tmp_path: Path
) -> None:
    scheduler_file = _fake_sysfs(tmp_path / "sys", small_model)
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
    assert _current(scheduler_file) == "kyber"
    assert not (tmp_path / "journal.json").exists()
    again = pagewarm("scheduler", "restore", env=env)
    assert (again.returncode, "nothing to restore" in again.stdout) == (0, True)


def test_sigterm_mid_experiment_restores_and_stops_the_load(
    small_model: Path, tmp_path: Path
) -> None:
    scheduler_file = _fake_sysfs(tmp_path / "sys", small_model)
    env = _env(tmp_path, tmp_path / "sys")
    bench, load_pid = _bench_until_loading(small_model, tmp_path, env, scheduler_file)
    bench.send_signal(signal.SIGTERM)
    _out, err = bench.communicate(timeout=60)
    assert bench.returncode == 128 + signal.SIGTERM, err
    assert _current(scheduler_file) == "kyber"
    assert not (tmp_path / "journal.json").exists()
    assert "I/O scheduler restored" in err
    with pytest.raises(ProcessLookupError):
        os.kill(load_pid, 0)  # the load's process group was stopped too


def test_without_permission_it_runs_under_the_current_scheduler_and_says_so(
    small_model: Path, shared_tmp: Path
) -> None:
    require_root("runs the bench as user nobody against a root-owned scheduler file")
    model = shared_tmp / "model"
    shutil.copytree(small_model, model)
    scheduler_file = _fake_sysfs(shared_tmp / "sys", model)
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
    assert {s.scheduler for s in samples} == {"kyber"}
    assert all("not writable" in (s.scheduler_note or "") for s in samples)
    # As nobody, residency of root's files cannot be trusted: unverified, never faked.
    assert all(s.mode_verified is None and s.resident_ratio_before is None for s in samples)
    assert {s.mode for s in samples} == {Mode.COLD, Mode.WARM}
    assert scheduler_file.read_text().strip() == ORIGINAL
