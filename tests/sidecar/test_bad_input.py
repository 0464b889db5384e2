"""Bad input and bad luck: an unusable MODEL_PATH, a vLLM that never becomes healthy, one
that crashes and restarts, and SIGTERM at the worst moments."""

from __future__ import annotations

import json
import signal
import socket
import sys
import uuid
from pathlib import Path

import pytest

from controller.synth import synth
from exporter.samples import Sample
from tests.sidecar.conftest import Processes
from tests.sidecar.pod import (
    assert_matches_stand_in,
    free_port,
    metric_value,
    process_pattern,
    restart_fake_vllm,
    start_fake_vllm,
    start_sidecar,
    wait_for,
)
from tests.support import evict_path, held_in_memory, pagewarm

MiB = 1 << 20
NO_MODEL_ENV = {"MODEL_PATH": "", "PAGEWARM_MODEL_PATH": ""}


@pytest.mark.parametrize("command", ["sidecar", "init"])
def test_missing_model_path_fails_fast_with_the_reason(tmp_path: Path, command: str) -> None:
    result = pagewarm(command, tmp_path / "nope")
    assert result.returncode == 2, result.stderr
    assert f"model path {tmp_path / 'nope'} does not exist" in result.stderr


@pytest.mark.parametrize("command", ["sidecar", "init"])
def test_model_path_without_weights_fails_fast(tmp_path: Path, command: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no weights here\n")
    result = pagewarm(command, tmp_path / "empty")
    assert result.returncode == 2, result.stderr
    assert "no weight files under" in result.stderr


@pytest.mark.parametrize("command", ["sidecar", "init"])
def test_unset_or_empty_model_path_is_an_error_not_the_current_directory(command: str) -> None:
    # MODEL_PATH="" (an empty value in a pod spec) must not mean "warm the working directory".
    result = pagewarm(command, env=NO_MODEL_ENV)
    assert result.returncode == 2, result.stderr
    assert "no model path" in result.stderr


def test_bad_options_are_refused(small_model: Path) -> None:
    for args, message in (
        (["--gate", "ratio:2"], "the ratio must be a number in (0, 1]"),
        (["--gate", "half"], "is not a policy"),
        (["--gate-timeout", "0"], "--gate-timeout 0: Input should be greater than 0"),
        (["--vllm-process-pattern", "(unclosed"], "not a regular expression"),
    ):
        result = pagewarm("sidecar", small_model, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    result = pagewarm("sidecar", small_model, env={"PAGEWARM_GATE": "sometimes"})
    assert result.returncode == 2
    assert "PAGEWARM_GATE='sometimes'" in result.stderr


def test_a_vllm_that_never_becomes_healthy_is_recorded_as_timed_out(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    instance, port = uuid.uuid4().hex[:10], free_port()
    sidecar = processes.sidecar(
        start_sidecar(
            small_model,
            tmp_path,
            "--load-timeout",
            "8",  # wide: under load the stand-in's imports alone took 1.75 s
            "--vllm-url",
            f"http://127.0.0.1:{port}/health",
            "--vllm-process-pattern",
            process_pattern(instance),
        )
    )
    sidecar.probe_startup()
    fake = processes.fake(
        start_fake_vllm(
            small_model,
            tmp_path,
            "--startup-seconds",
            "0.2",
            "--never-healthy",
            port=port,
            instance=instance,
        )
    )
    [load] = sidecar.wait_samples("load", 1)
    assert load["outcome"] == "timed_out"
    assert load["seconds"] >= 8
    assert "did not answer 200 within 8 s (last: HTTP 503)" in load["error"]
    assert fake.process.poll() is None  # the sidecar only watches; it stops nothing
    metrics = sidecar.metrics()
    mode = load["mode"]
    assert metric_value(metrics, "pagewarm_loads_total", mode=mode, outcome="timed_out") == 1.0
    assert metric_value(metrics, "pagewarm_last_load_duration_seconds", mode=mode) is None
    assert sidecar.status()["vllm"]["phase"] == "not_ready"
    assert sidecar.terminate() == 0


def test_a_crash_loop_yields_one_sample_per_start(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    instance, port = uuid.uuid4().hex[:10], free_port()
    sidecar = processes.sidecar(
        start_sidecar(
            small_model,
            tmp_path,
            "--vllm-url",
            f"http://127.0.0.1:{port}/health",
            "--vllm-process-pattern",
            process_pattern(instance),
        )
    )
    sidecar.probe_startup()
    # Three starts that get ready and then crash, like an engine dying under load (serving
    # for 3 s: the sidecar polls /health every 0.1 s, but on a loaded machine a poll can be
    # late by a second; and a load timed from an earlier start would be 3 s too long)...
    crash_after_ready = ("--startup-seconds", "0.3", "--crash-after-ready", "3")
    fake = processes.fake(
        start_fake_vllm(small_model, tmp_path, *crash_after_ready, port=port, instance=instance)
    )
    pids = [fake.process.pid]
    assert fake.process.wait(30) == 1
    sidecar.wait_samples("load", 1)
    # The restarts find the weights the first start read (held: DAMON pageout would take
    # them within seconds on these VMs).
    with held_in_memory(small_model):
        for _ in range(2):
            restart_fake_vllm(fake, small_model, *crash_after_ready)
            pids.append(fake.process.pid)
            assert fake.process.wait(30) == 1
        # ...and one that dies while loading (alive for 3 s, long enough to be seen).
        restart_fake_vllm(fake, small_model, "--startup-seconds", "30", "--crash-after", "3")
        pids.append(fake.process.pid)
        assert fake.process.wait(30) == 1
        loads = sidecar.wait_samples("load", 4)
    assert [s["vllm_pid"] for s in loads] == pids
    assert [s["vllm_start"] for s in loads] == [1, 2, 3, 4]
    assert [s["outcome"] for s in loads] == ["ok", "ok", "ok", "failed"]
    # The warm belongs to the first start; the restarts found what the last load left.
    assert loads[0]["mode"] in ("prewarm_cold", "prewarm_warm")
    assert [s["mode"] for s in loads[1:3]] == ["warm", "warm"]
    assert loads[3]["error"].startswith(f"vLLM (pid {pids[3]}) exited after ")
    assert "before http://127.0.0.1" in loads[3]["error"]
    for sample, pid in zip(loads[:3], pids, strict=False):
        assert_matches_stand_in(sample, fake, pid)
    metrics = sidecar.metrics()
    assert metric_value(metrics, "pagewarm_sidecar_vllm_starts_total") == 4.0
    assert metric_value(metrics, "pagewarm_loads_total", mode="warm", outcome="ok") == 2.0
    assert sidecar.terminate() == 0


def all_lines_are_samples(store: Path) -> list[Sample]:
    """Every line of the store is one whole, valid sample: nothing torn."""
    raw = store.read_bytes()
    assert raw.endswith(b"\n")
    return [Sample.model_validate(json.loads(line)) for line in raw.decode().splitlines()]


def test_sigterm_mid_warm_exits_cleanly_with_a_partial_sample(
    tmp_path: Path, processes: Processes
) -> None:
    model = tmp_path / "model"
    synth(model, 32 * MiB, shards=2)
    evict_path(model)
    sidecar = processes.sidecar(
        start_sidecar(model, tmp_path, env={"PAGEWARM_PREWARM_RATE_LIMIT_BYTES": str(4 * MiB)})
    )
    wait_for(lambda: (sidecar.status()["prewarm"]["read_bytes"] or 0) > 0, 30, "the warm")
    assert sidecar.status()["prewarm"]["phase"] == "warming"
    assert sidecar.terminate() == 0
    [warm] = all_lines_are_samples(sidecar.samples_path)
    assert warm.kind == "prewarm" and warm.partial is True
    assert warm.extra_fields["partial_reason"] == "cancelled"
    assert warm.bytes_read is not None and 0 < warm.bytes_read < 32 * MiB
    events = [e["event"] for e in sidecar.logs()]
    assert "pre-warm cancelled" in events and "sidecar stopped" in events


def test_sigterm_mid_append_finishes_the_sample_then_exits(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    """SIGTERM while the pre-warm sample is half written: the append completes (the sidecar
    runs under tests/pause_mid_write.py, which pauses it mid-line), nothing is torn, and the
    exit is clean."""
    marker = tmp_path / "mid-write"
    store = tmp_path / "samples.jsonl"  # where start_sidecar points the sidecar
    pause = [sys.executable, "-m", "tests.pause_mid_write", str(store), str(marker), "2", "--"]
    sidecar = processes.sidecar(start_sidecar(small_model, tmp_path, wrapper=pause))
    assert sidecar.samples_path == store
    wait_for(marker.exists, 30, "the sample append to be half written")
    sidecar.process.send_signal(signal.SIGTERM)
    assert sidecar.process.wait(30) == 0
    [warm] = all_lines_are_samples(sidecar.samples_path)
    assert warm.kind == "prewarm" and warm.source == "sidecar"


def test_sigterm_while_vllm_loads_records_no_half_known_load(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    instance, port = uuid.uuid4().hex[:10], free_port()
    sidecar = processes.sidecar(
        start_sidecar(
            small_model,
            tmp_path,
            "--vllm-url",
            f"http://127.0.0.1:{port}/health",
            "--vllm-process-pattern",
            process_pattern(instance),
        )
    )
    sidecar.probe_startup()
    processes.fake(
        start_fake_vllm(
            small_model, tmp_path, "--startup-seconds", "30", port=port, instance=instance
        )
    )
    wait_for(lambda: sidecar.status()["vllm"]["phase"] == "loading", 30, "vLLM to be seen loading")
    assert sidecar.terminate() == 0
    # Its outcome is unknown: no load sample, and the pre-warm sample is whole.
    assert [s.kind for s in all_lines_are_samples(sidecar.samples_path)] == ["prewarm"]


def test_a_port_in_use_is_exit_status_1(small_model: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = pagewarm("sidecar", small_model, "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1, result.stderr
    assert "cannot listen" in result.stderr
