"""Dashboard "pagewarm / Cold starts overview": how many cold starts the fleet has and how
long they take, cold vs warm vs pre-warmed, what pre-warm costs, and the cache and memory
state behind it."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import units

from exporter.linux.permissions import OWNER_REMEDY
from grafana.panels import (
    MODEL,
    RECORDED_LOADS,
    SCHEDULER_BY_DEVICE,
    TARGET,
    ColumnUnit,
    Dashboard,
    Query,
    Size,
    ValueText,
    bargauge_panel,
    heatmap_panel,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "pagewarm-cold-starts"
FILE_NAME = "cold-starts-overview.json"

LOAD = "pagewarm_load_duration_seconds"
REGRESSION_RUNBOOK = "docs/runbooks/PagewarmColdLoadRegression.md"
# Table queries aggregate to the labels they show: the queries then share exactly these
# columns (and no __name__), which is what Grafana's merge transformation joins on.
LATEST_LOAD_COLUMNS = "model, mode, namespace, node, pod"


def _quantile(quantile: str, window: str, mode: str | None = None) -> str:
    """A recorded load-time quantile (alerts/pagewarm.rules.yml): per namespace, model and
    mode, for the chosen ones."""
    matchers = RECORDED_LOADS + (f', mode="{mode}"' if mode else "")
    return f"namespace_model_mode:{LOAD}:{quantile}_{window}{{{matchers}}}"


def _live_quantile(quantile: float) -> str:
    """A load-time quantile over the last hour from the pods' own histograms, so that it
    follows every variable (node and pod included), per namespace, model and mode."""
    return (
        f"histogram_quantile({quantile}, sum by (namespace, model, mode, le) "
        f"(increase({LOAD}_bucket{{{MODEL}}}[1h]))) >= 0"
    )


def build() -> models.Dashboard:
    board = Dashboard(
        title="pagewarm / Cold starts overview",
        uid=UID,
        description=(
            "Model load times (cold, warm, pre-warmed), pre-warm cost, page-cache residency "
            "and memory, from the pagewarm exporters and sidecars."
        ),
    )
    _cold_starts(board)
    _load_times(board)
    _prewarm(board)
    _cache_and_memory(board)
    return board.build()


def _cold_starts(board: Dashboard) -> None:
    board.row("Cold starts")
    board.panel(
        stat_panel(
            "Loads by mode: last hour and last 24 hours",
            "Model loads (vLLM starts timed to ready, and measured loads) that ended ok, by "
            "mode, over the last hour and the last 24 hours, for the chosen targets. cold and "
            "prewarm_cold are cold starts: a pod on a node whose page cache did not hold the "
            "model (scale-out, rescheduling, scale from zero). If cold loads outnumber "
            "prewarm_cold ones, starts are not pre-warmed: check that the chart's sidecar "
            "runs in those pods and its gate (Sidecars dashboard).",
            units.Short,
            [
                Query(
                    f"sum by (mode) (increase({LOAD}_count{{{MODEL}}}[1h]))",
                    "{{mode}} (1 h)",
                    instant=True,
                ),
                Query(
                    f"sum by (mode) (increase({LOAD}_count{{{MODEL}}}[24h]))",
                    "{{mode}} (24 h)",
                    instant=True,
                ),
            ],
            Size(10, 8),
            decimals=0,
        )
    )
    board.panel(
        heatmap_panel(
            "Time to ready (all loads, by load-time bucket)",
            "How long loads took, as a heatmap of the load-time histogram's buckets over "
            "time (every mode; one cell per bucket and interval, its colour the number of "
            "loads). A cold start on a node without the model in its page cache sits in the "
            "upper buckets, a warm or pre-warmed one in the lower. If the mass moves up over "
            "days, loads got slower (PagewarmColdLoadRegression); if a second band appears, "
            "some nodes or pods load slower than the rest: split by node with the variables.",
            units.Seconds,
            Query(
                f"sum by (le) (increase({LOAD}_bucket{{{MODEL}}}[$__rate_interval]))",
                "{{le}}",
            ),
            Size(14, 8),
        )
    )


def _load_times(board: Dashboard) -> None:
    board.row("Load times")
    for quantile, name in ((0.5, "Median"), (0.9, "p90")):
        recorded = f"p{round(quantile * 100)}"
        board.panel(
            timeseries_panel(
                f"{name} load time by model and mode (1 h window)",
                f"{name} of model load times per namespace, model and mode over a sliding "
                "hour, from the histograms of the chosen targets (every variable applies); "
                f"dashed: the namespace's baseline over 7 days (recording rule "
                f"namespace_model_mode:{LOAD}:{recorded}_7d). Modes: cold (weights not in the "
                "page cache), warm, prewarm_cold (pre-warmed, then loaded), prewarm_warm. "
                "Gaps are hours without a load. If a cold or prewarm_cold line climbs well "
                "above its dashed line, cold starts have regressed: compare the I/O scheduler "
                "and read-ahead on the Node and model cache dashboard and the pre-warm panels "
                f"below, then follow {REGRESSION_RUNBOOK}.",
                units.Seconds,
                [
                    Query(_live_quantile(quantile), "{{model}} {{mode}} {{namespace}}"),
                    Query(_quantile(recorded, "7d"), "{{model}} {{mode}} {{namespace}} (7 days)"),
                ],
                dashed="/7 days/",
                min_value=0,
            )
        )
    board.panel(
        bargauge_panel(
            "Cold vs warm vs pre-warmed: median over 7 days",
            "Median load time of each model in each mode and namespace over the last 7 days "
            f"(recording rule namespace_model_mode:{LOAD}:p50_7d). prewarm_cold should be "
            "close to warm: that is "
            "what the pre-warm is for. If prewarm_cold stays close to cold, the pre-warm does "
            "not finish before the load starts or is partial: check the pre-warm panels below "
            "and the memory budget (Memory available vs model size).",
            units.Seconds,
            [Query(_quantile("p50", "7d"), "{{model}} {{mode}} {{namespace}}", instant=True)],
            Size(12, 8),
        )
    )
    board.panel(
        stat_panel(
            "Pre-warm speed-up (median cold / median prewarm_cold, 7 days)",
            "How many times faster a pre-warmed cold start loads than a plain cold start, per "
            "model, from the 7-day medians. Near 1x means the pre-warm buys nothing: if so, "
            "check that the sidecar's gate waits for the pre-warm (--gate), that the pre-warm "
            "is not partial (memory budget) and that its throughput is near the disk's.",
            "suffix:x",
            [
                Query(
                    f"{_quantile('p50', '7d', 'cold')}"
                    f" / ignoring (mode) {_quantile('p50', '7d', 'prewarm_cold')}",
                    "{{model}} {{namespace}}",
                    instant=True,
                )
            ],
            Size(12, 8),
            decimals=1,
        )
    )
    board.panel(
        table_panel(
            "Latest loads",
            "The last successful load of each model in each mode in each pod: how long it "
            "took and when it ended. If one node's cold loads are much slower than the "
            "others', suspect that node's disk or scheduler (Node and model cache dashboard); "
            "`pagewarm samples --model <model> --since 1d` on that node lists every sample "
            "with its residency before and after.",
            units.Seconds,
            [
                Query(
                    f"max by ({LATEST_LOAD_COLUMNS}) "
                    f"(pagewarm_last_load_duration_seconds{{{MODEL}}})",
                    instant=True,
                ),
                Query(
                    f"max by ({LATEST_LOAD_COLUMNS}) "
                    f"(pagewarm_last_load_timestamp_seconds{{{MODEL}}}) * 1000",
                    instant=True,
                ),
            ],
            Size(14, 9),
            columns={
                "model": "Model",
                "mode": "Mode",
                "namespace": "Namespace",
                "node": "Node",
                "pod": "Pod",
                "Value #A": "Duration",
                "Value #B": "Ended at",
            },
            column_units=[ColumnUnit("Ended at", units.DatetimeISO)],
            sort_by="Duration",
        )
    )
    board.panel(
        timeseries_panel(
            "Loads in the last hour by outcome",
            "Model loads in the hour before each point, by model, mode and outcome (ok, "
            "failed, timed_out). Failed or timed-out loads are not in the load-time panels. "
            "If they appear, read the error of those samples (`pagewarm samples --model "
            "<model>`, field error) and the model server's log; a timeout usually means the "
            "model server never answered its health check.",
            units.Short,
            [
                Query(
                    "sum by (model, mode, outcome) "
                    f"(increase(pagewarm_loads_total{{{MODEL}}}[1h]))",
                    "{{model}} {{mode}} {{outcome}}",
                )
            ],
            Size(10, 9),
            bars=True,
            min_value=0,
        )
    )


def _prewarm(board: Dashboard) -> None:
    board.row("Pre-warm")
    board.panel(
        timeseries_panel(
            "Pre-warm duration (last run)",
            "How long the last pre-warm run that did not fail took, per model and pod. "
            "It should track the model size divided by the disk's read throughput. If it "
            "grows while the model did not, the storage got slower (see Pre-warm throughput "
            "and the Node and model cache dashboard); if it is longer than the model "
            "server's own start-up, the pre-warm delays starts instead of hiding the read.",
            units.Seconds,
            [
                Query(
                    f"pagewarm_last_prewarm_duration_seconds{{{MODEL}}}",
                    "{{model}} {{node}} {{pod}}",
                )
            ],
            Size(8, 8),
            min_value=0,
        )
    )
    board.panel(
        timeseries_panel(
            "Pre-warm throughput (last run)",
            "Read throughput of the last pre-warm run per model and pod. Compare it with "
            "what the device can do (fio with O_DIRECT on the model volume). If it is far "
            "below, the pre-warm is CPU- or thread-bound (try --strategy populate or more "
            "--threads) or rate-limited (--rate-limit); if the device itself is slow, see "
            "the scheduler and read-ahead on the Node and model cache dashboard.",
            units.BytesPerSecondIEC,
            [
                Query(
                    f"pagewarm_last_prewarm_throughput_bytes_per_second{{{MODEL}}}",
                    "{{model}} {{node}} {{pod}}",
                )
            ],
            Size(8, 8),
            min_value=0,
        )
    )
    board.panel(
        timeseries_panel(
            "Pre-warm runs in the last hour by outcome",
            "Pre-warm runs in the hour before each point, by model and outcome: ok, partial "
            "(stopped by the memory budget or cancelled by a stopping pod: part of the model "
            "stays cold) and failed. If failed runs appear, PagewarmPrewarmFailing fires: "
            "read the samples' errors (`pagewarm samples --kind prewarm`, "
            "docs/runbooks/PagewarmPrewarmFailing.md). If partial runs appear where the "
            "memory limit should hold the model, raise the pod's memory limit above the "
            "model size.",
            units.Short,
            [
                Query(
                    "sum by (model, outcome) "
                    f"(increase(pagewarm_prewarm_runs_total{{{MODEL}}}[1h]))",
                    "{{model}} {{outcome}}",
                )
            ],
            Size(8, 8),
            bars=True,
            min_value=0,
        )
    )


def _cache_and_memory(board: Dashboard) -> None:
    board.row("Page cache and memory")
    board.panel(
        timeseries_panel(
            "Resident ratio by model",
            "Fraction of each model's weight files in the page cache, per node and pod. 100% means "
            "the next start of the model on that node is a warm one. If a model that was "
            "resident drops, memory pressure evicted it (PagewarmResidencyDropped): see "
            "Memory available vs model size and the eviction panel on the Node and model "
            "cache dashboard. No line for a model: residency is untrusted there (see "
            "Residency trusted).",
            units.PercentUnit,
            [Query(f"pagewarm_model_resident_ratio{{{MODEL}}}", "{{model}} {{node}} {{pod}}")],
            Size(12, 8),
            min_value=0,
            max_value=1,
        )
    )
    board.panel(
        stat_panel(
            "Residency trusted",
            "Whether each pod can measure residency truthfully (1) or not (0). Unless it owns "
            "the weight files (or runs as UID 0 with CAP_FOWNER), the kernel hides residency "
            "and pagewarm reports it as unknown rather than a made-up 100%. If a pod shows "
            f"untrusted, {OWNER_REMEDY} (docs/runbooks/PagewarmResidencyUntrusted.md).",
            units.NoUnit,
            [
                Query(
                    f"min by (node, pod) (pagewarm_model_residency_trusted{{{MODEL}}})",
                    "{{node}} {{pod}}",
                )
            ],
            Size(5, 8),
            mappings=[
                ValueText("1", "trusted", "green"),
                ValueText("0", "untrusted: run as the files' owner", "red"),
            ],
        )
    )
    board.panel(
        table_panel(
            "I/O scheduler by device",
            "The I/O scheduler of each block device that holds model weights, per node. "
            "Virtio and SCSI disks default to mq-deadline, NVMe to none. If a device's "
            "scheduler changes, PagewarmSchedulerChanged fires: find who changed it (udev "
            "rule, tuned profile, node image) before cold loads regress.",
            units.NoUnit,
            [
                Query(
                    SCHEDULER_BY_DEVICE,
                    instant=True,
                )
            ],
            Size(7, 8),
            columns={"node": "Node", "device": "Device", "scheduler": "Scheduler"},
        )
    )
    board.panel(
        timeseries_panel(
            "Memory available vs model size",
            "MemAvailable of each node, the memory cgroup limit and usage of each pod, and "
            "each model's size. A pre-warm only fits where the budget (the lower of "
            "MemAvailable and the cgroup limit, minus a reserve) exceeds the model size: page "
            "cache is charged to the cgroup that reads it. If a model is larger than the "
            "limit, pre-warm runs end partial and the cache is evicted again: raise the "
            "pod's memory limit above the model size.",
            units.BytesIEC,
            [
                Query(
                    f"max by (node) (pagewarm_memory_available_bytes{{{TARGET}}})",
                    "MemAvailable {{node}}",
                ),
                Query(f"pagewarm_memory_cgroup_limit_bytes{{{TARGET}}}", "cgroup limit {{pod}}"),
                Query(f"pagewarm_memory_cgroup_usage_bytes{{{TARGET}}}", "cgroup usage {{pod}}"),
                Query(f"max by (model) (pagewarm_model_size_bytes{{{MODEL}}})", "{{model}} size"),
            ],
            Size(24, 8),
            min_value=0,
            dashed="/size$/",
        )
    )
