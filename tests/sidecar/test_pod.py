"""A pod, simulated with real processes: the sidecar starts, a kubelet-like loop probes its
/startup, the vLLM stand-in starts once the gate is open and really reads the weights. The
sample the sidecar records must match what the stand-in itself saw."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from controller.prewarm import prewarm
from controller.synth import synth
from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.sidecar.conftest import Processes
from tests.sidecar.pod import (
    ABOVE_TOLERANCE,
    BELOW_TOLERANCE,
    FakeVllm,
    Sidecar,
    assert_matches_stand_in,
    free_port,
    metric_value,
    process_pattern,
    restart_fake_vllm,
    start_fake_vllm,
    start_sidecar,
    wait_for,
)
from tests.support import (
    NOBODY_GID,
    NOBODY_UID,
    evict_path,
    held_in_memory,
    require_binary,
    require_root,
)

STARTUP_SECONDS = "0.4"


def ratio(model: Path) -> float:
    measured = ResidencyProbe().measure(discover(model)).ratio
    assert measured is not None
    return measured


def pod_sidecar(
    model: Path, tmp_path: Path, processes: Processes, instance: str, port: int, *args: str
) -> Sidecar:
    """The sidecar of a pod whose vLLM listens on ``port`` and is tagged ``instance``."""
    health = f"http://127.0.0.1:{port}/health"
    pattern = process_pattern(instance) if instance else ""
    return processes.sidecar(
        start_sidecar(
            model, tmp_path, "--vllm-url", health, "--vllm-process-pattern", pattern, *args
        )
    )


def pod_vllm(
    model: Path, tmp_path: Path, processes: Processes, instance: str, port: int, *args: str
) -> FakeVllm:
    return processes.fake(
        start_fake_vllm(
            model,
            tmp_path,
            "--startup-seconds",
            STARTUP_SECONDS,
            *args,
            port=port,
            instance=instance or None,
        )
    )


def test_cold_pod_is_prewarmed_gated_and_timed(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    evict_path(small_model)
    assert ratio(small_model) < 0.02
    instance, port = uuid.uuid4().hex[:10], free_port()
    vllm_log = str(tmp_path / "vllm.log")
    sidecar = pod_sidecar(
        small_model, tmp_path, processes, instance, port, "--gate", "full", "--vllm-log", vllm_log
    )
    answers = sidecar.probe_startup()
    status, body = answers[-1]
    assert status == 200
    assert body["gate"]["open"] is True and body["prewarm"]["phase"] == "done"
    # The gate opened because the weights are resident (not asserted as exactly 1.0:
    # these VMs' DAMON pageout scheme may take a few pages of fresh page cache).
    assert ratio(small_model) > 0.95

    fake = pod_vllm(small_model, tmp_path, processes, instance, port)
    [load] = sidecar.wait_samples("load", 1)
    [warm] = sidecar.samples("prewarm")
    assert load["outcome"] == "ok" and load["source"] == "sidecar"
    assert load["mode"] == "prewarm_cold", load
    assert load["mode_verified"] is True
    assert load["timing_origin"] == "process_start"
    assert load["vllm_pid"] == fake.process.pid
    assert_matches_stand_in(load, fake, fake.process.pid)
    # The pre-warm is a sample of its own, linked from the load.
    assert warm["source"] == "sidecar" and warm["outcome"] == "ok" and warm["partial"] is False
    assert warm["resident_ratio_before"] < 0.02
    assert load["prewarm_id"] == warm["id"]
    # vLLM's "Model loading took X GiB and Y seconds", read from its log file.
    loaded = fake.event("loaded")
    assert load["vllm_weights_seconds"] == pytest.approx(loaded["seconds"], abs=1e-5)
    assert load["vllm_model_memory_gib"] == pytest.approx(loaded["tensor_bytes"] / 2**30, 1e-3)
    assert load["vllm_other_seconds"] == pytest.approx(
        load["seconds"] - load["vllm_weights_seconds"]
    )

    # The exporter side of the same process shows it.
    metrics = sidecar.metrics()
    labels = {"model": "small", "mode": "prewarm_cold"}
    assert metric_value(metrics, "pagewarm_loads_total", outcome="ok", **labels) == 1.0
    last = metric_value(metrics, "pagewarm_last_load_duration_seconds", **labels)
    assert last == pytest.approx(load["seconds"])
    assert metric_value(metrics, "pagewarm_prewarm_runs_total", model="small", outcome="ok") == 1
    assert metric_value(metrics, "pagewarm_sidecar_gate_open") == 1.0
    assert metric_value(metrics, "pagewarm_sidecar_gate_info", policy="full") == 1.0
    assert metric_value(metrics, "pagewarm_sidecar_prewarm_progress_ratio") == 1.0
    assert metric_value(metrics, "pagewarm_sidecar_vllm_starts_total") == 1.0
    assert metric_value(metrics, "pagewarm_model_resident_ratio", model="small") is not None
    assert sidecar.get("/healthz")[0] == 200
    assert sidecar.terminate() == 0


def test_without_prewarm_a_cold_then_a_warm_start(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    evict_path(small_model)
    instance, port = uuid.uuid4().hex[:10], free_port()
    sidecar = pod_sidecar(small_model, tmp_path, processes, instance, port, "--no-prewarm")
    [(status, body)] = sidecar.probe_startup()
    assert status == 200 and "disabled" in body["gate"]["reason"]
    fake = pod_vllm(small_model, tmp_path, processes, instance, port)
    [cold] = sidecar.wait_samples("load", 1)
    first_pid = fake.process.pid
    fake.process.terminate()
    fake.process.wait(30)
    # vLLM restarts (a new container process): the weights are resident from its first load
    # (and held there: DAMON pageout would take them within seconds on these VMs).
    with held_in_memory(small_model):
        restart_fake_vllm(fake, small_model, "--startup-seconds", STARTUP_SECONDS)
        _, warm = sidecar.wait_samples("load", 2)
    assert cold["mode"] == "cold" and cold["resident_ratio_before"] < 0.02, cold
    assert warm["mode"] == "warm" and warm["resident_ratio_before"] > 0.95, warm
    assert cold["prewarm_id"] is None and warm["prewarm_id"] is None
    assert_matches_stand_in(cold, fake, first_pid)
    assert_matches_stand_in(warm, fake, fake.process.pid)
    assert sidecar.samples("prewarm") == []
    metrics = sidecar.metrics()
    assert metric_value(metrics, "pagewarm_loads_total", mode="cold", outcome="ok") == 1.0
    assert metric_value(metrics, "pagewarm_loads_total", mode="warm", outcome="ok") == 1.0
    assert metric_value(metrics, "pagewarm_sidecar_vllm_starts_total") == 2.0
    assert sidecar.terminate() == 0


def test_prewarm_of_a_resident_model_is_prewarm_warm(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    prewarm(discover(small_model))
    instance, port = uuid.uuid4().hex[:10], free_port()
    with held_in_memory(small_model):  # resident until vLLM has started, whatever DAMON does
        sidecar = pod_sidecar(small_model, tmp_path, processes, instance, port)
        sidecar.probe_startup()
        fake = pod_vllm(small_model, tmp_path, processes, instance, port)
        [load] = sidecar.wait_samples("load", 1)
    [warm] = sidecar.samples("prewarm")
    assert load["mode"] == "prewarm_warm", load
    assert warm["resident_ratio_before"] > 0.95
    assert warm["bytes_read"] < 0.05 * warm["model_bytes"]  # nothing to read
    assert_matches_stand_in(load, fake, fake.process.pid)
    assert sidecar.terminate() == 0


def test_without_a_process_view_the_load_is_timed_from_the_gate(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    """No shared process namespace (here: no pattern): timing starts when the gate opens,
    so it includes the (simulated) kubelet's delay before vLLM starts; never less than
    vLLM's own time."""
    evict_path(small_model)
    port = free_port()
    sidecar = pod_sidecar(small_model, tmp_path, processes, "", port)
    sidecar.probe_startup()
    fake = pod_vllm(small_model, tmp_path, processes, "", port)
    [load] = sidecar.wait_samples("load", 1)
    assert load["timing_origin"] == "gate_open" and load["vllm_pid"] is None
    assert load["mode"] == "prewarm_cold"
    own = fake.time_to_ready()
    assert own - BELOW_TOLERANCE <= load["seconds"] <= own + ABOVE_TOLERANCE + 0.5
    status = sidecar.status()
    assert status["vllm"]["process_view"] is False
    assert any("not visible" in e.get("event", "") for e in sidecar.logs())
    assert sidecar.terminate() == 0


def test_a_restarted_sidecar_does_not_time_a_vllm_that_is_already_serving(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    """The kubelet restarts a native sidecar on its own: the new sidecar finds vLLM serving
    and must not record a load for it, but times vLLM's next start."""
    instance, port = uuid.uuid4().hex[:10], free_port()
    first = pod_sidecar(small_model, tmp_path / "first", processes, instance, port)
    first.probe_startup()
    fake = pod_vllm(small_model, tmp_path, processes, instance, port)
    first.wait_samples("load", 1)
    assert first.terminate() == 0
    # The weights stay resident from here on (DAMON pageout would take them on these VMs).
    with held_in_memory(small_model):
        second = pod_sidecar(small_model, tmp_path / "second", processes, instance, port)
        second.probe_startup()
        wait_for(
            lambda: any("already serving" in e.get("event", "") for e in second.logs()),
            30,
            "the new sidecar to notice vLLM",
        )
        assert second.samples("load") == []
        assert second.status()["vllm"]["phase"] == "ready"
        # vLLM's next start is timed.
        fake.process.terminate()
        fake.process.wait(30)
        restart_fake_vllm(fake, small_model, "--startup-seconds", STARTUP_SECONDS)
        [load] = second.wait_samples("load", 1)
    assert load["vllm_pid"] == fake.process.pid and load["vllm_start"] == 1
    assert load["mode"] == "warm"  # the warm of this sidecar was not for this start
    assert_matches_stand_in(load, fake, fake.process.pid)
    assert second.terminate() == 0


def test_untrusted_residency_is_reported_unknown_never_guessed(
    shared_tmp: Path, processes: Processes
) -> None:
    """As a user the kernel hides page-cache state from (no ownership, no CAP_FOWNER): the
    warm and the gate still work, but the sample's mode is not claimed (partial,
    unverified, no ratio) and keep-warm says it cannot see evictions."""
    require_root("switching to user nobody")
    require_binary("setpriv")
    model = shared_tmp / "model"
    synth(model, 16 << 20, shards=2)
    workdir = shared_tmp / "nobody"
    workdir.mkdir()
    os.chown(workdir, NOBODY_UID, NOBODY_GID)
    setpriv = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_GID}", "--clear-groups"]
    instance, port = uuid.uuid4().hex[:10], free_port()
    sidecar = processes.sidecar(
        start_sidecar(
            model,
            workdir,
            "--keep-warm",
            "--keep-warm-interval",
            "0.2",
            "--vllm-url",
            f"http://127.0.0.1:{port}/health",
            "--vllm-process-pattern",
            process_pattern(instance),
            wrapper=setpriv,
            env={"HOME": str(workdir)},
        )
    )
    status, body = sidecar.probe_startup()[-1]
    assert status == 200 and body["prewarm"]["phase"] == "done"
    pod_vllm(model, workdir, processes, instance, port)
    [load] = sidecar.wait_samples("load", 1)
    assert load["outcome"] == "ok"
    assert load["mode"] == "partial" and load["mode_verified"] is None
    assert load["resident_ratio_before"] is None
    wait_for(lambda: sidecar.status()["keep_warm"]["last_note"], 30, "keep-warm's verdict")
    assert "truthfully" in sidecar.status()["keep_warm"]["last_note"]
    metrics = sidecar.metrics()
    assert metric_value(metrics, "pagewarm_model_residency_trusted", model="model") == 0.0
    assert metric_value(metrics, "pagewarm_model_resident_ratio", model="model") is None
    assert sidecar.terminate() == 0
