"""A sample store that cannot take samples is refused before the load (one line naming it,
exit 2, the load never started); one that refuses the sample after the load gets it printed
on stdout instead (exit 1): nothing measured is lost. Real files, the real command line,
the load a real command that marks that it ran."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.samplestore import SampleStore, SampleStoreError
from exporter.errors import UserError
from exporter.samples import Sample
from tests.support import NOBODY_UID, pagewarm, write_random

MiB = 1 << 20


@pytest.fixture
def model(shared_tmp: Path) -> Path:
    root = shared_tmp / "model"
    write_random(root / "model.safetensors", 1 * MiB)
    root.chmod(0o755)
    (root / "model.safetensors").chmod(0o644)
    return root


def _proc(_: Path) -> tuple[str, str]:
    return "/proc/pagewarm-samples.jsonl", "/proc is proc, not storage"


def _sys(_: Path) -> tuple[str, str]:
    return "/sys/kernel/pagewarm/samples.jsonl", "/sys/kernel is sysfs, not storage"


def _directory(tmp: Path) -> tuple[str, str]:
    return str(tmp), "is a directory"


def _empty(_: Path) -> tuple[str, str]:
    return "", "is a directory (an empty setting or flag names the current directory)"


def _device(_: Path) -> tuple[str, str]:
    return "/dev/null", "not a regular file"


def _fifo(tmp: Path) -> tuple[str, str]:
    os.mkfifo(tmp / "fifo")
    return str(tmp / "fifo"), "not a regular file"


def _under_a_file(tmp: Path) -> tuple[str, str]:
    (tmp / "plain").write_text("x")
    return str(tmp / "plain" / "samples.jsonl"), "cannot be written: Not a directory"


STORES = [_proc, _sys, _directory, _empty, _device, _fifo, _under_a_file]


@pytest.mark.parametrize("command", ["measure", "bench"])
@pytest.mark.parametrize("store", STORES, ids=[f.__name__[1:] for f in STORES])
def test_an_unusable_store_is_refused_before_the_load(
    model: Path, shared_tmp: Path, store: Callable[[Path], tuple[str, str]], command: str
) -> None:
    path, reason = store(shared_tmp)
    marker = shared_tmp / "loaded"
    args = ["--runs", "1", "--modes", "warm"] if command == "bench" else []
    done = pagewarm(command, model, *args, "--", "touch", marker, env={"PAGEWARM_SAMPLES": path})
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    event = json.loads(line)["event"]
    assert event.startswith(f"sample store {path or '.'}: ") and reason in event
    assert not marker.exists()  # the load never ran


@pytest.mark.parametrize("command", ["measure", "bench"])
def test_a_read_only_directory_is_refused_before_the_load(
    model: Path, shared_tmp: Path, command: str
) -> None:
    read_only = shared_tmp / "read-only"
    read_only.mkdir(mode=0o755)  # root's; the command runs as nobody
    marker = shared_tmp / "loaded"
    store = read_only / "samples.jsonl"
    args = ["--runs", "1", "--modes", "warm"] if command == "bench" else []
    done = pagewarm(
        command, model, *args, "--", "touch", marker,
        env={"PAGEWARM_SAMPLES": str(store)}, user=NOBODY_UID,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"sample store {store}: cannot be written: Permission denied" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("command", ["measure", "bench"])
def test_a_store_that_fails_after_the_load_gets_the_sample_printed(
    model: Path, shared_tmp: Path, command: str
) -> None:
    store = shared_tmp / "samples.jsonl"
    # The load itself takes the store's name away: the check before passed, the write fails.
    args = ["--runs", "1", "--modes", "cold"] if command == "bench" else []
    done = pagewarm(
        command, model, *args, "--", "mkdir", store, env={"PAGEWARM_SAMPLES": str(store)}
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"sample store {store}: cannot be written: Is a directory" in done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("{")]
    sample = Sample.model_validate_json(line)
    assert sample.kind == "load" and sample.outcome == "ok"
    assert sample.model_path == str(model)
    assert store.is_dir()


def test_the_check_leaves_nothing_behind(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "new" / "deeper" / "samples.jsonl")
    store.check_writable()
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "samples.jsonl"
    existing.write_text("")
    SampleStore(existing).check_writable()
    assert existing.read_text() == ""


def test_a_store_error_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SampleStoreError, match="is a directory") as caught:
        SampleStore(tmp_path).check_writable()
    assert isinstance(caught.value, UserError)


OUTS = {
    "procfs": ("/proc/pagewarm-report", "/proc is proc, not storage"),
    "sysfs": ("/sys/kernel/pagewarm-report", "/sys/kernel is sysfs, not storage"),
    "a-file": ("{tmp}/plain", "exists and is not a directory"),
    "under-a-file": ("{tmp}/plain/out", "is not a directory"),
}


@pytest.mark.parametrize("case", sorted(OUTS))
def test_bench_refuses_an_unwritable_report_directory_before_the_bench(
    model: Path, shared_tmp: Path, case: str
) -> None:
    """A sibling: `bench --out` wrote its report after the whole bench, then crashed."""
    (shared_tmp / "plain").write_text("x")
    out, reason = OUTS[case]
    out = out.format(tmp=shared_tmp)
    marker, store = shared_tmp / "loaded", shared_tmp / "samples.jsonl"
    done = pagewarm(
        "bench", model, "--runs", "1", "--modes", "warm", "--out", out, "--", "touch", marker,
        env={"PAGEWARM_SAMPLES": str(store)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    event = json.loads(line)["event"]
    assert event.startswith(f"--out {out}: ") and reason in event
    assert not marker.exists() and not store.exists()


PROFILE_OUTS = {
    "procfs": "/proc/profile.json",
    "sysfs": "/sys/kernel/profile.json",
    "a-directory": "{tmp}",
    "under-a-file": "{tmp}/plain/profile.json",
}


@pytest.mark.parametrize("case", sorted(PROFILE_OUTS))
def test_profile_record_refuses_an_unwritable_out_before_recording(
    shared_tmp: Path, case: str
) -> None:
    """A sibling: `profile record --out` recorded the whole start-up, then crashed."""
    (shared_tmp / "plain").write_text("x")
    out = PROFILE_OUTS[case].format(tmp=shared_tmp)
    marker = shared_tmp / "started"
    done = pagewarm(
        "profile", "record", "--model-name", "tiny", "--out", out, "--", "touch", marker
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert json.loads(line)["event"].startswith("--out")
    assert not marker.exists()  # the engine was never started
