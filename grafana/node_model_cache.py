"""Dashboard "pagewarm / Node and model cache": which node holds which model warm (the node
agents' warm map, and per model how many nodes), what one node holds in its page cache,
per model and per file, what it evicts, and the block devices the weights are read from."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import units

from grafana.panels import (
    MODEL,
    SCHEDULER_BY_DEVICE,
    TARGET,
    ColumnUnit,
    Dashboard,
    Query,
    Size,
    ValueText,
    bargauge_panel,
    matrix_panel,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "pagewarm-node-cache"
FILE_NAME = "node-model-cache.json"

# Red under half resident, yellow under 90%, green above: the thresholds of
# PagewarmResidencyDropped.
RESIDENCY_STEPS: tuple[tuple[float | None, str], ...] = (
    (None, "red"),
    (0.5, "yellow"),
    (0.9, "green"),
)


def build() -> models.Dashboard:
    board = Dashboard(
        title="pagewarm / Node and model cache",
        uid=UID,
        description=(
            "Page-cache residency per model and per weight file, eviction, the block devices "
            "and I/O schedulers behind the models, and the exporter's own health."
        ),
    )
    _warm_map(board)
    _residency(board)
    _eviction(board)
    _devices(board)
    _exporter(board)
    return board.build()


# pagewarm_model_warm is 0 or 1: red cold, green warm.
WARM_STEPS: tuple[tuple[float | None, str], ...] = ((None, "red"), (1, "green"))


def _warm_map(board: Dashboard) -> None:
    board.row("Warm map (node agents)")
    board.panel(
        matrix_panel(
            "Node x model: warm",
            "What the node agents (pagewarm node, the chart's node mode) keep warm: a row per "
            "node, a column per model in the agents' lists, green where the agent reports the "
            "model warm (pagewarm_model_warm 1: at least its warm threshold resident, with "
            "hysteresis), red where it is not. These cells are the node labels "
            "pagewarm.io/warm-<model>=true that NFD sets, which the vLLM Deployments prefer. "
            "If a cell stays red, the agent's memory budget is taken by higher "
            "priorities, the node is under memory pressure, or the model thrashes (the "
            "agent's /status says which). An empty cell: that node's agent does not list "
            "the model.",
            units.NoUnit,
            Query(
                f"max by (node, model) (pagewarm_model_warm{{{MODEL}}})",
                instant=True,
            ),
            Size(16, 8),
            rows="node",
            columns="model",
            steps=WARM_STEPS,
        )
    )
    board.panel(
        bargauge_panel(
            "Warm nodes per model",
            "Per model, the nodes whose agent holds it warm (pagewarm:model_warm_nodes:count). "
            "A pod of the model that is scaled out or rescheduled starts warm only on one of "
            "these nodes: if a model runs more replicas than it has warm nodes, add it to "
            "more agents' lists (node.models), raise its priority, or give the nodes more "
            "memory. PagewarmModelWarmOnTooFewNodes (opt-in: "
            "monitoring.prometheusRule.modelReplicas) alerts on it.",
            units.NoUnit,
            [
                Query(
                    'pagewarm:model_warm_nodes:count{cluster=~"$cluster", model=~"$model"}',
                    "{{model}}",
                    instant=True,
                )
            ],
            Size(8, 8),
            steps=((None, "red"), (1, "green")),
        )
    )


def _residency(board: Dashboard) -> None:
    board.row("Residency")
    board.panel(
        matrix_panel(
            "Node x model: resident ratio",
            "The fleet's warm/cold map: a row per node, a column per model, each cell the "
            "fraction of the model's weights in that node's page cache (the highest any "
            "pagewarm pod there measures; the node-mode DaemonSet sees every model in the "
            "node's cache directory). Green cells are nodes where a new pod of that model "
            "starts warm. If a model is red or empty on every node it may be scheduled to, "
            "its next scale-out is a cold start: pre-warm it on a node, or steer its pods "
            "to the green nodes (preferred node affinity). An empty cell: not there, or "
            "untrusted (Residency trusted, Cold starts overview).",
            units.PercentUnit,
            Query(
                f"max by (node, model) (pagewarm_model_resident_ratio{{{MODEL}}})",
                instant=True,
            ),
            Size(24, 8),
            rows="node",
            columns="model",
            steps=RESIDENCY_STEPS,
        )
    )
    board.panel(
        bargauge_panel(
            "Residency by model",
            "Fraction of each model's weight files in the page cache, per node and pod. Green "
            "(90% and more): the next start of that model on that node is warm. If a model "
            "that should be warm is red, pre-warm it (`pagewarm prewarm <model path>`, or "
            "the sidecar) and check why it was evicted: Evicted and recently evicted bytes "
            "below, and memory on the Cold starts overview. A model missing here is "
            "untrusted (see Residency trusted on the overview).",
            units.PercentUnit,
            [
                Query(
                    f"pagewarm_model_resident_ratio{{{MODEL}}}",
                    "{{model}} on {{node}} ({{pod}})",
                    instant=True,
                )
            ],
            Size(12, 8),
            max_value=1,
            steps=RESIDENCY_STEPS,
        )
    )
    board.panel(
        bargauge_panel(
            "Residency by file",
            "Fraction of each weight file in the page cache (up to PAGEWARM_FILE_SERIES_LIMIT "
            "files per model, shards first). Loaders read shards in order, so a cold shard "
            "in the middle stalls the load there. If some shards are cold while others are "
            "warm, the cache is too small for the model or another workload evicted part of "
            "it: `pagewarm status <model path> --map` on the node shows which ranges.",
            units.PercentUnit,
            [
                Query(
                    f"pagewarm_file_resident_bytes{{{MODEL}}}"
                    f" / pagewarm_file_size_bytes{{{MODEL}}}",
                    "{{model}} {{file}} on {{node}}",
                    instant=True,
                )
            ],
            Size(12, 8),
            max_value=1,
            steps=RESIDENCY_STEPS,
        )
    )
    board.panel(
        timeseries_panel(
            "Resident bytes vs model size",
            "Bytes of each model in the page cache over time; dashed: the model's size. A "
            "step down is an eviction, a ramp up a pre-warm or a load. If the resident line "
            "keeps falling back after pre-warms, the node cannot hold the model: check "
            "memory available and the cgroup limit (Cold starts overview).",
            units.BytesIEC,
            [
                Query(f"pagewarm_model_resident_bytes{{{MODEL}}}", "{{model}} {{node}} {{pod}}"),
                Query(f"pagewarm_model_size_bytes{{{MODEL}}}", "{{model}} {{node}} {{pod}} size"),
            ],
            Size(16, 8),
            min_value=0,
            dashed="/size$/",
        )
    )
    board.panel(
        stat_panel(
            "Weight files and skipped files",
            "Weight files per model, and files under the model path that pagewarm passed over "
            "(FIFOs and devices, broken or looping links, duplicates, unreadable files, "
            ".bin beside .safetensors). Skipped files above 0 are worth a look: `pagewarm "
            "status <model path>` lists each with its reason. If a model has far fewer files "
            "than expected, the model path or the model-path patterns are wrong.",
            units.NoUnit,
            [
                Query(
                    f"max by (model) (pagewarm_model_files{{{MODEL}}})",
                    "{{model}} files",
                    instant=True,
                ),
                Query(
                    f"max by (model) (pagewarm_model_skipped_files{{{MODEL}}})"
                    f" or max by (model) (pagewarm_model_files{{{MODEL}}}) * 0",
                    "{{model}} skipped",
                    instant=True,
                ),
            ],
            Size(8, 8),
        )
    )


def _eviction(board: Dashboard) -> None:
    board.row("Eviction and thrash")
    board.panel(
        timeseries_panel(
            "Evicted and recently evicted bytes",
            "From cachestat(2): bytes of each model evicted from the page cache whose "
            "eviction the kernel still remembers, those evicted recently enough that reading "
            "them again counts as a refault (thrash), and dirty bytes (weights should have "
            "none). If recently evicted bytes stay above zero, the node's page cache is too "
            "small for what it runs and models are read from disk again and again: move "
            "memory-hungry work off the node, give it more memory, or keep fewer models on "
            "it (docs/runbooks/PagewarmResidencyDropped.md).",
            units.BytesIEC,
            [
                Query(f"pagewarm_model_evicted_bytes{{{MODEL}}}", "{{model}} evicted"),
                Query(
                    f"pagewarm_model_recently_evicted_bytes{{{MODEL}}}",
                    "{{model}} recently evicted",
                ),
                Query(f"pagewarm_model_dirty_bytes{{{MODEL}}}", "{{model}} dirty"),
            ],
            Size(24, 8),
            min_value=0,
        )
    )


def _devices(board: Dashboard) -> None:
    board.row("Block devices")
    board.panel(
        table_panel(
            "Devices: scheduler, read-ahead, rotational",
            "Each block device under the model paths: its I/O scheduler, read-ahead and "
            "whether it is rotational. If the scheduler differs from the fleet's "
            "(PagewarmSchedulerChanged) or read-ahead is tiny (a few KiB makes sequential "
            "weight reads slow), restore the node's tuning (udev rule, node image); a "
            "rotational device serving weights explains slow cold loads by itself.",
            units.BytesIEC,
            [
                # Aggregated to the shown labels: the merge joins on the shared columns.
                Query(
                    SCHEDULER_BY_DEVICE,
                    instant=True,
                ),
                Query(
                    f"max by (node, device) (pagewarm_block_device_read_ahead_bytes{{{TARGET}}})",
                    instant=True,
                ),
                Query(
                    f"max by (node, device) (pagewarm_block_device_rotational{{{TARGET}}})",
                    instant=True,
                ),
            ],
            Size(12, 8),
            columns={
                "node": "Node",
                "device": "Device",
                "scheduler": "Scheduler",
                "Value #B": "Read-ahead",
                "Value #C": "Rotational",
            },
            column_units=[ColumnUnit("Rotational", units.NoUnit)],
            column_mappings={
                "Rotational": [
                    ValueText("0", "no (SSD, NVMe)", "green"),
                    ValueText("1", "yes (HDD)", "orange"),
                ]
            },
        )
    )
    board.panel(
        table_panel(
            "Models by device and filesystem",
            "Where each model's files live: device, filesystem type and mount point. "
            "Overlay, NFS, FUSE and tmpfs have no block device (no scheduler applies). If a "
            "model sits on network storage or an overlay (the container image) while a local "
            "NVMe is available, move it there: cold loads read at the storage's speed.",
            units.NoUnit,
            [
                Query(
                    "max by (model, node, device, fstype, mountpoint) "
                    f"(pagewarm_model_device_info{{{MODEL}}})",
                    instant=True,
                )
            ],
            Size(12, 8),
            columns={
                "model": "Model",
                "node": "Node",
                "device": "Device",
                "fstype": "Filesystem",
                "mountpoint": "Mount point",
            },
        )
    )


def _exporter(board: Dashboard) -> None:
    board.row("Exporter")
    board.panel(
        timeseries_panel(
            "Collector duration",
            "How long each collector of each exporter takes per scrape. If one grows toward "
            "the scrape timeout, the target will show as down (PagewarmExporterDown): a "
            "residency collector over many files or a slow filesystem is the usual cause; "
            "lower PAGEWARM_FILE_SERIES_LIMIT or watch fewer models per exporter.",
            units.Seconds,
            [
                Query(
                    f"pagewarm_collector_duration_seconds{{{TARGET}}}",
                    "{{collector}} {{node}} {{pod}}",
                )
            ],
            Size(16, 8),
            min_value=0,
        )
    )
    board.panel(
        stat_panel(
            "Collector success",
            "1 when every target's collector succeeded in its last scrape, 0 when one failed "
            "(its series are then missing or partial). If a collector fails, the exporter's "
            "log (JSON, event names like 'residency failed') says which model or device and "
            "why.",
            units.NoUnit,
            [
                Query(
                    f"min by (collector) (pagewarm_collector_success{{{TARGET}}})",
                    "{{collector}}",
                    instant=True,
                )
            ],
            Size(8, 8),
            mappings=[ValueText("1", "ok", "green"), ValueText("0", "failing", "red")],
        )
    )
