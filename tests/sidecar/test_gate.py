"""The gate policies, probed like a kubelet: full, ratio, none (overlap) and the timeout.

The warm is slowed down with the pre-warm rate limit (PAGEWARM_PREWARM_RATE_LIMIT_BYTES) so
that the gate's closed phase is long enough to be seen, by seconds: on a loaded machine
the test's probes and the processes it starts may each be late by a second. No assertion
is on speed."""

from __future__ import annotations

import uuid
from pathlib import Path

from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.sidecar.conftest import Processes
from tests.sidecar.pod import (
    free_port,
    metric_value,
    process_pattern,
    start_fake_vllm,
    start_sidecar,
)
from tests.support import evict_path

MiB = 1 << 20


def slow(bytes_per_second: int) -> dict[str, str]:
    return {"PAGEWARM_PREWARM_RATE_LIMIT_BYTES": str(bytes_per_second)}


def test_gate_full_answers_503_with_the_reason_until_the_weights_are_resident(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    evict_path(small_model)
    sidecar = processes.sidecar(
        start_sidecar(small_model, tmp_path, "--gate", "full", env=slow(16 * MiB))
    )
    answers = sidecar.probe_startup()
    closed = [body for status, body in answers if status == 503]
    assert closed, "the gate was never seen closed"
    assert all(body["gate"]["open"] is False for body in closed)
    assert any(body["prewarm"]["phase"] == "warming" for body in closed)
    assert "gate full opens at 100%" in closed[-1]["gate"]["reason"]
    status, body = answers[-1]
    assert status == 200
    assert body["prewarm"]["phase"] == "done" and body["gate"]["timed_out"] is False
    # Not exactly 1.0: DAMON pageout on these VMs may take a few fresh pages.
    ratio = ResidencyProbe().measure(discover(small_model)).ratio
    assert ratio is not None and ratio > 0.95
    assert sidecar.terminate() == 0


def test_gate_ratio_opens_part_way_and_the_warm_goes_on(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    evict_path(small_model)
    sidecar = processes.sidecar(
        start_sidecar(small_model, tmp_path, "--gate", "ratio:0.5", env=slow(8 * MiB))
    )
    status, body = sidecar.probe_startup()[-1]
    assert status == 200
    assert body["gate"]["policy"] == "ratio:0.5"
    assert "ratio:0.5 reached" in body["gate"]["reason"]
    assert 0.5 <= body["prewarm"]["fraction"] < 1.0
    assert body["prewarm"]["phase"] == "warming"
    metrics = sidecar.metrics()
    assert metric_value(metrics, "pagewarm_sidecar_gate_info", policy="ratio:0.5") == 1.0
    progress = metric_value(metrics, "pagewarm_sidecar_prewarm_progress_ratio")
    assert progress is not None and progress >= 0.5
    assert sidecar.terminate() == 0


def test_gate_none_opens_at_once_and_the_warm_overlaps_vllm(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    evict_path(small_model)
    instance, port = uuid.uuid4().hex[:10], free_port()
    # Configured through the environment this time, as the chart may do. The warm takes
    # 32 s: vLLM (a few seconds) is ready long before it ends.
    env = {
        **slow(2 * MiB),
        "PAGEWARM_GATE": "none",
        "PAGEWARM_VLLM_HEALTH_URL": f"http://127.0.0.1:{port}/health",
        "PAGEWARM_VLLM_PROCESS_PATTERN": process_pattern(instance),
    }
    sidecar = processes.sidecar(start_sidecar(small_model, tmp_path, env=env))
    [(status, body)] = sidecar.probe_startup()
    assert status == 200
    assert body["prewarm"]["phase"] in ("pending", "warming")
    assert body["prewarm"]["fraction"] < 1.0
    processes.fake(
        start_fake_vllm(
            small_model, tmp_path, "--startup-seconds", "1", port=port, instance=instance
        )
    )
    [load] = sidecar.wait_samples("load", 1)
    assert load["outcome"] == "ok" and load["gate_policy"] == "none"
    # The warm began from a cold cache and ran beside vLLM, which answered before the warm
    # was done (having read the rest of the weights itself): partial.
    assert load["prewarm_resident_ratio_before"] < 0.02
    assert load["prewarm_complete_before_ready"] is False
    assert load["mode"] == "partial", load
    assert sidecar.terminate() == 0


def test_gate_timeout_opens_anyway_and_says_so(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    evict_path(small_model)
    instance, port = uuid.uuid4().hex[:10], free_port()
    sidecar = processes.sidecar(
        start_sidecar(
            small_model,
            tmp_path,
            "--gate",
            "full",
            "--gate-timeout",
            "5",
            "--vllm-url",
            f"http://127.0.0.1:{port}/health",
            "--vllm-process-pattern",
            process_pattern(instance),
            env=slow(2 * MiB),  # 32 s for the model: far past the timeout
        )
    )
    answers = sidecar.probe_startup()
    assert answers[0][0] == 503
    status, body = answers[-1]
    assert status == 200
    assert body["gate"]["timed_out"] is True
    assert body["gate"]["reason"].startswith("gate timeout: 5 s passed")
    assert "opened anyway" in body["gate"]["reason"]
    assert body["prewarm"]["phase"] == "warming"
    metrics = sidecar.metrics()
    assert metric_value(metrics, "pagewarm_sidecar_gate_timed_out") == 1.0
    assert metric_value(metrics, "pagewarm_sidecar_gate_open") == 1.0
    assert any(e["event"] == "gate opened by its timeout" for e in sidecar.logs())
    # vLLM starts against a half-warm cache; its sample says the gate timed out.
    processes.fake(
        start_fake_vllm(
            small_model, tmp_path, "--startup-seconds", "0.3", port=port, instance=instance
        )
    )
    [load] = sidecar.wait_samples("load", 1)
    assert load["gate_timed_out"] is True and load["mode"] == "partial"
    # SIGTERM cancels the warm: its sample says partial (cancelled), the exit is clean.
    assert sidecar.terminate() == 0
    [warm] = sidecar.samples("prewarm")
    assert warm["partial"] is True and warm["partial_reason"] == "cancelled"
