"""Dashboard "pagewarm / Sidecars": the pre-warm sidecars' own health, one line per vLLM pod:
the startup gate (open, its policy, opened by timeout, after how long), the pre-warm's
progress, the vLLM starts it timed, and keep-warm (re-reads, thrashing, locked bytes).
Every pagewarm_sidecar_* series is on a panel here (controller/sidecar/collector.py)."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import units

from grafana.panels import (
    TARGET,
    Dashboard,
    Query,
    Size,
    ValueText,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "pagewarm-sidecars"
FILE_NAME = "sidecars.json"
# One line per pod: the pod's name says which model it serves (a sidecar serves one).
BY_POD = "namespace, node, pod"


def _series(metric: str) -> str:
    return f"pagewarm_sidecar_{metric}{{{TARGET}}}"


def build() -> models.Dashboard:
    board = Dashboard(
        title="pagewarm / Sidecars",
        uid=UID,
        description=(
            "The pagewarm sidecars next to vLLM: the startup gate, pre-warm progress, the "
            "vLLM starts they time, and keep-warm."
        ),
        per_model=False,
    )
    _gate(board)
    _prewarm(board)
    _vllm(board)
    _keepwarm(board)
    return board.build()


def _gate(board: Dashboard) -> None:
    board.row("Startup gate")
    board.panel(
        table_panel(
            "Gates: open, policy, opened by timeout",
            "Each sidecar's startup gate: whether it is open (vLLM may start), its policy "
            "(full, ratio:X, none) and whether it opened because --gate-timeout passed rather "
            "than because the weights were warm. If a gate stays closed, vLLM has not started "
            "in that pod: its pre-warm is still reading (Pre-warm progress) or stuck; if "
            "gates open by timeout, the warm takes longer than the timeout allows: the disk "
            "is slow or the timeout short (sidecar.gateTimeoutSeconds).",
            units.NoUnit,
            [
                Query(f"max by ({BY_POD}) ({_series('gate_open')})", instant=True),
                Query(f"max by ({BY_POD}, policy) ({_series('gate_info')})", instant=True),
                Query(f"max by ({BY_POD}) ({_series('gate_timed_out')})", instant=True),
            ],
            Size(14, 8),
            columns={
                "namespace": "Namespace",
                "node": "Node",
                "pod": "Pod",
                "policy": "Policy",
                "Value #A": "Open",
                "Value #C": "Opened by timeout",
            },
            column_mappings={
                "Open": [ValueText("1", "open", "green"), ValueText("0", "closed", "orange")],
                "Opened by timeout": [
                    ValueText("0", "no", "green"),
                    ValueText("1", "yes", "red"),
                ],
            },
        )
    )
    board.panel(
        timeseries_panel(
            "Gate opened after",
            "Seconds from each sidecar's start until its gate opened: the time the pre-warm "
            "held vLLM back (with --gate none, about zero). If it approaches the gate "
            "timeout, pods start late and partly cold: look at the pre-warm throughput "
            "(Cold starts overview) and the node's disk.",
            units.Seconds,
            [Query(f"max by ({BY_POD}) ({_series('gate_opened_after_seconds')})", "{{pod}}")],
            Size(10, 8),
            min_value=0,
        )
    )


def _prewarm(board: Dashboard) -> None:
    board.row("Pre-warm")
    board.panel(
        timeseries_panel(
            "Pre-warm progress",
            "Fraction of the weight set each sidecar's pre-warm has covered (resident or "
            "read). It climbs to 1 within seconds to minutes of a pod's start. If it stalls "
            "below 1, the warm hit the memory budget (partial) or the disk is slow: compare "
            "with the bytes read beside it and Memory available vs model size (Cold starts "
            "overview).",
            units.PercentUnit,
            [Query(f"max by ({BY_POD}) ({_series('prewarm_progress_ratio')})", "{{pod}}")],
            Size(12, 8),
            min_value=0,
            max_value=1,
        )
    )
    board.panel(
        timeseries_panel(
            "Bytes read by the pre-warm",
            "Bytes each sidecar's pre-warm brought into the page cache so far (what was "
            "already resident is not read again). If it stays at zero while progress is 1, "
            "the model was warm already (a warm start); if it grows slowly, the storage is "
            "slow or the pre-warm is rate-limited (prewarm.rateLimitBytesPerSecond).",
            units.BytesIEC,
            [Query(f"max by ({BY_POD}) ({_series('prewarm_read_bytes')})", "{{pod}}")],
            Size(12, 8),
            min_value=0,
        )
    )


def _vllm(board: Dashboard) -> None:
    board.row("vLLM starts")
    board.panel(
        timeseries_panel(
            "vLLM starts in the last hour",
            "vLLM starts each sidecar saw in the hour before each point: timed ones (from "
            "the process's start, with a shared process namespace) and untimed ones (restarts "
            "seen only through /health). If a pod shows more than one an hour, vLLM crash "
            "loops there: read vLLM's log and the pod's events; the timed loads are on the "
            "Cold starts overview.",
            units.Short,
            [
                Query(
                    f"sum by ({BY_POD}) (increase({_series('vllm_starts_total')}[1h]))",
                    "{{pod}} timed",
                ),
                Query(
                    f"sum by ({BY_POD}) (increase({_series('vllm_untimed_starts_total')}[1h]))",
                    "{{pod}} untimed",
                ),
            ],
            Size(16, 8),
            bars=True,
            min_value=0,
        )
    )
    board.panel(
        stat_panel(
            "vLLM ready",
            "Whether vLLM's /health answers 200 in each pod, as its sidecar sees it. If a "
            "pod stays not ready long after its gate opened, vLLM is still loading or failing "
            "to: read its log (Model loading took ...) and compare with the Time to ready "
            "heatmap.",
            units.NoUnit,
            [Query(f"max by ({BY_POD}) ({_series('vllm_ready')})", "{{pod}}", instant=True)],
            Size(8, 8),
            mappings=[ValueText("1", "ready", "green"), ValueText("0", "not ready", "orange")],
        )
    )


def _keepwarm(board: Dashboard) -> None:
    board.row("Keep-warm")
    board.panel(
        timeseries_panel(
            "Keep-warm re-reads",
            "Bytes per second keep-warm reads back into the page cache after the kernel "
            "evicted them (sidecar.keepWarm). Short bursts after memory pressure are the "
            "point of keep-warm. If it reads all the time, the node's page cache cannot hold "
            "the model next to what else runs there: see Thrashing, and the eviction panel "
            "on the Node and model cache dashboard.",
            units.BytesPerSecondIEC,
            [
                Query(
                    f"sum by ({BY_POD}) (rate({_series('rewarm_bytes_total')}[$__rate_interval]))",
                    "{{pod}}",
                )
            ],
            Size(10, 8),
            min_value=0,
        )
    )
    board.panel(
        timeseries_panel(
            "Thrashing",
            "1 while what keep-warm brings back is evicted again at once: the node is under "
            "memory pressure and keep-warm backs off rather than fight the kernel's reclaim. "
            "If a pod thrashes for long, give the node more memory or move memory-hungry "
            "work (or models) off it (docs/runbooks/PagewarmResidencyDropped.md).",
            units.NoUnit,
            [Query(f"max by ({BY_POD}) ({_series('keepwarm_thrashing')})", "{{pod}}")],
            Size(7, 8),
            min_value=0,
            max_value=1,
        )
    )
    board.panel(
        timeseries_panel(
            "Locked bytes (mlock)",
            "Bytes of the weights each sidecar keeps locked in memory (sidecar.mlock). If it "
            "is zero where mlock is on, the lock failed: the sidecar's log and /status say "
            "why (IPC_LOCK is effective only for UID 0; otherwise RLIMIT_MEMLOCK must hold "
            "the model).",
            units.BytesIEC,
            [Query(f"max by ({BY_POD}) ({_series('mlocked_bytes')})", "{{pod}}")],
            Size(7, 8),
            min_value=0,
        )
    )
