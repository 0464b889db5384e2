"""Every panel query and every variable query of every dashboard, run against a real
Prometheus that scrapes several real pagewarm targets, each as its own node: an exporter
for one model (in a memory cgroup with a limit, as in a pod) with real cold, warm and
pre-warmed loads recorded by ``pagewarm measure``; the node agent (``pagewarm node``, the
chart's node mode) over a models directory; and a sidecar that pre-warms, gates and times
a stand-in vLLM. Prometheus labels them the way the chart's ServiceMonitor does (its
rendered relabeling gives each series the `node` of its pod), and loads the repo's rules
file. Each query must parse and return data: a query that returns nothing is a broken
panel.

Template variables are substituted as Grafana does: once with "All" (``.*``), once with
the values the variable queries offer; ``$__rate_interval`` as Grafana computes it for a
data source whose scrape interval is the test's.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.synth import synth
from exporter.linux.memcg import find_memory_cgroup
from grafana.lint import panels
from tests.deploy import chart
from tests.prometheus import (
    ExporterHandle,
    PrometheusHandle,
    prometheus_config,
    running_exporter,
    running_prometheus,
    running_server,
)
from tests.sidecar.pod import (
    free_port,
    process_pattern,
    start_fake_vllm,
    start_sidecar,
)
from tests.support import IN_CI, REPO, pagewarm, require_root

pytestmark = pytest.mark.slow

RULES = REPO / "alerts" / "pagewarm.rules.yml"
DASHBOARDS = sorted((REPO / "grafana").glob("*.json"))
MODEL_NAME = "dashboard-test"
SERVED_MODEL = "qwen-mini"  # in the node's cache directory (gpu-b) and served on gpu-c
CLUSTER = "test-cluster"
SCRAPE_INTERVAL = 1.0
MAX_DATA_POINTS = 1000  # a panel's width in pixels, about
ROUNDS = 3
MODES: dict[str, tuple[str, ...]] = {
    "cold": ("--evict",),
    "warm": (),
    "prewarm_cold": ("--evict", "--prewarm"),
    "prewarm_warm": ("--prewarm",),
}
MiB = 1 << 20


@dataclass(frozen=True)
class Target:
    """A scrape target with the labels Kubernetes discovery gives its pod."""

    address: str
    node: str
    namespace: str
    pod: str


@dataclass(frozen=True)
class Live:
    prometheus: PrometheusHandle
    targets: tuple[Target, ...]
    start: float  # before the first sample


@contextmanager
def _memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A memory cgroup with a limit, below this process's own (removed afterwards)."""
    require_root("a memory cgroup with a limit for the exporter, as a pod has")
    own = find_memory_cgroup()
    if own is None:
        message = "no writable memory cgroup hierarchy"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    child = own.path / f"pagewarm-test-{uuid.uuid4().hex[:8]}"
    child.mkdir()
    try:
        limit_file = "memory.limit_in_bytes" if own.version == 1 else "memory.max"
        (child / limit_file).write_text(str(limit_bytes))
        yield child
    finally:
        child.rmdir()


@contextmanager
def _exporter_in(cgroup: Path, *args: str | os.PathLike[str]) -> Iterator[ExporterHandle]:
    """running_exporter, with the exporter process born inside ``cgroup``: this process
    joins it for the fork and goes back to its own cgroup right after."""
    own = find_memory_cgroup()
    assert own is not None
    pid = str(os.getpid())
    with ExitStack() as stack:
        (cgroup / "cgroup.procs").write_text(pid)
        try:
            exporter = stack.enter_context(running_exporter(*args))
        finally:
            (own.path / "cgroup.procs").write_text(pid)
        yield exporter


def chart_relabelings() -> list[dict[str, Any]]:
    """The target relabelings of the chart's ServiceMonitor, as Prometheus configures them
    (the operator's camelCase fields in Prometheus' snake_case)."""
    rendered = chart.render([chart.values_file("monitoring-on")])
    (endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [{keys.get(k, k): v for k, v in r.items()} for r in endpoint["relabelings"]]


def _scrape(prometheus: PrometheusHandle, targets: tuple[Target, ...]) -> None:
    """Point Prometheus at the targets with what Kubernetes discovery would give them, the
    chart's relabeling applied, and reload it."""
    config = prometheus_config(
        [], SCRAPE_INTERVAL, rule_files=[RULES], evaluation_interval=SCRAPE_INTERVAL
    )
    job = config["scrape_configs"][0]
    job["static_configs"] = [
        {
            "targets": [t.address],
            "labels": {
                "cluster": CLUSTER,
                "namespace": t.namespace,
                "pod": t.pod,
                "__meta_kubernetes_pod_node_name": t.node,
            },
        }
        for t in targets
    ]
    job["relabel_configs"] = chart_relabelings()
    (prometheus.directory / "prometheus.yml").write_text(json.dumps(config))
    request = urllib.request.Request(f"{prometheus.url}/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _measure(model: Path, store: Path, mode: str) -> None:
    result = pagewarm(
        "measure",
        model,
        "--mode",
        mode,
        *MODES[mode],
        "--model-name",
        MODEL_NAME,
        "--loader",
        "safetensors",
        env={"PAGEWARM_SAMPLES": str(store)},
    )
    assert result.returncode == 0, result.stderr


def _equals(expected: float) -> Callable[[float], bool]:
    return lambda value: value == expected


def _model(directory: Path, size: int = 32 * MiB) -> Path:
    synth(directory, size, shards=4)
    return directory


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    directory = tmp_path_factory.mktemp("dashboards")
    model = _model(directory / "model")
    # A FIFO where a shard could be: skipped (never opened), reported as skipped.
    os.mkfifo(model / "stray.safetensors")
    cache = directory / "node-cache"  # gpu-b's model cache directory (node mode)
    _model(cache / SERVED_MODEL, 8 * MiB)
    _model(cache / "mistral-mini", 8 * MiB)
    served = _model(directory / "gpu-c" / SERVED_MODEL, 8 * MiB)
    store = directory / "samples.jsonl"
    vllm_port, instance = free_port(), uuid.uuid4().hex[:10]
    with (
        _memory_cgroup(2 << 30) as cgroup,
        running_prometheus(
            [], SCRAPE_INTERVAL, rule_files=[RULES], evaluation_interval=SCRAPE_INTERVAL
        ) as prometheus,
        _exporter_in(
            cgroup, "--model-path", model, "--model-name", MODEL_NAME, "--samples", store
        ) as exporter,
        # gpu-b runs the node agent (the chart's node mode) over its cache directory: the
        # exporter's families for each model, and the warm map the dashboard shows.
        running_server(
            "node", "--models-dir", cache, "--node-name", "gpu-b", "--interval", "1s"
        ) as node,
        ExitStack() as processes,
    ):
        sidecar = start_sidecar(
            served,
            directory / "sidecar",
            "--gate",
            "none",
            "--keep-warm",
            "--model-name",
            SERVED_MODEL,
            "--vllm-url",
            f"http://127.0.0.1:{vllm_port}/health",
            "--vllm-process-pattern",
            process_pattern(instance),
        )
        processes.callback(sidecar.terminate)
        targets = (
            Target(exporter.target, "gpu-a", "team-a", "dashboard-test-6d9f-x2k4p"),
            Target(node.target, "gpu-b", "pagewarm", "pagewarm-node-5xq2d"),
            Target(f"127.0.0.1:{sidecar.port}", "gpu-c", "team-b", "qwen-mini-5b8c-m2v9t"),
        )
        _scrape(prometheus, targets)
        prometheus.wait_for_targets_up()
        prometheus.wait_for(
            "count(pagewarm_build_info)", lambda r: bool(r) and r[0]["value"][1] == "3"
        )
        start = time.time()
        fake = start_fake_vllm(
            served,
            directory / "sidecar",
            "--startup-seconds",
            "0.3",
            port=vllm_port,
            instance=instance,
        )
        processes.callback(fake.stop)
        # Rounds of every mode, each seen by a scrape before the next: rate() needs a
        # series to grow between two scrapes.
        loads = f'sum(pagewarm_loads_total{{model="{MODEL_NAME}"}})'
        for round_number in range(1, ROUNDS + 1):
            for mode in MODES:
                _measure(model, store, mode)
            prometheus.wait_for_value(loads, _equals(round_number * len(MODES)))
        # The sidecar timed the stand-in's start, and Prometheus saw it.
        sidecar.wait_samples("load", 1)
        prometheus.wait_for_value(
            f'sum(pagewarm_loads_total{{model="{SERVED_MODEL}",node="gpu-c"}})', _equals(1)
        )
        # The recording rules have seen the growth.
        prometheus.wait_for(
            f'namespace_model_mode:pagewarm_load_duration_seconds:p50_7d{{model="{MODEL_NAME}"}}',
            lambda result: len(result) == len(MODES),
        )
        yield Live(prometheus, targets, start)


# Grafana's template interpolation, for Prometheus queries.

_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")


def _regex_value(values: list[str]) -> str:
    """A multi-value selection as Grafana writes it into a =~ matcher: each value
    regex-escaped (backslashes doubled for the PromQL string), joined by |."""
    escaped = [_REGEX_SPECIAL.sub(r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _interpolate(text: str, selection: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in selection:
            raise AssertionError(f"${name} has no value in {text!r}")
        return selection[name]

    return _VARIABLE.sub(replace, text)


def _intervals(start: float, end: float) -> tuple[float, str]:
    """($__interval in seconds, $__rate_interval) as Grafana computes them for this range."""
    interval = max(SCRAPE_INTERVAL, math.ceil((end - start) / MAX_DATA_POINTS))
    rate_interval = max(interval + SCRAPE_INTERVAL, 4 * SCRAPE_INTERVAL)
    return interval, f"{round(rate_interval * 1000)}ms"


def _variables(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in document["templating"]["list"] if v["type"] == "query"]


def _label_values(live: Live, query: str, end: float) -> list[str]:
    """A label_values(selector, label) variable query, as Grafana's Prometheus data source
    runs it: the label's values among the series the selector matches in the range."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, query
    selector, label = match.groups()
    values = live.prometheus.api(
        f"label/{label}/values", **{"match[]": selector, "start": str(live.start), "end": str(end)}
    )
    return sorted(values)


def _run_variables(live: Live, document: dict[str, Any], choose: bool) -> dict[str, str]:
    """Run every variable query in order (later ones use earlier ones' values); assert each
    offers values. The selection: All (.*) or, with ``choose``, all offered values."""
    end = time.time()
    selection: dict[str, str] = {"datasource": "unused"}
    for variable in _variables(document):
        query = _interpolate(variable["query"], selection)
        values = _label_values(live, query, end)
        assert values, f"variable {variable['name']}: {query} offers no value"
        selection[variable["name"]] = _regex_value(values) if choose else variable["allValue"]
    return selection


def _finite(result: dict[str, Any]) -> bool:
    if result["resultType"] == "matrix":
        points = [v for series in result["result"] for v in series["values"]]
    elif result["resultType"] == "vector":
        points = [series["value"] for series in result["result"]]
    else:
        points = [result["result"]]
    return any(math.isfinite(float(value)) for _, value in points)


def _run_panels(live: Live, document: dict[str, Any], selection: dict[str, str]) -> list[str]:
    """Run every query of every panel; the queries that failed or returned no data."""
    end = time.time()
    interval, rate_interval = _intervals(live.start, end)
    selection = {**selection, "__rate_interval": rate_interval}
    broken = []
    for panel in panels(document):
        for target in panel.get("targets", []):
            expr = _interpolate(target["expr"], selection)
            where = f"{document['uid']} / {panel['title']} / {target['refId']}: {expr}"
            try:
                if target.get("instant"):
                    data = live.prometheus.api("query", query=expr, time=str(end))
                else:
                    data = live.prometheus.api(
                        "query_range",
                        query=expr,
                        start=str(live.start),
                        end=str(end),
                        step=str(interval),
                    )
            except (AssertionError, OSError) as error:  # a parse error is an HTTP 400
                broken.append(f"{where}\n    failed: {error}")
                continue
            if not _finite(data):
                broken.append(f"{where}\n    returned no data")
    return broken


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_returns_data_with_all_selected(live: Live, path: Path) -> None:
    document = json.loads(path.read_text())
    selection = _run_variables(live, document, choose=False)
    broken = _run_panels(live, document, selection)
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_returns_data_for_the_offered_values(live: Live, path: Path) -> None:
    document = json.loads(path.read_text())
    selection = _run_variables(live, document, choose=True)
    assert selection["cluster"] == CLUSTER
    assert selection["node"] == _regex_value(sorted(t.node for t in live.targets))
    assert selection["pod"] == _regex_value(sorted(t.pod for t in live.targets))
    if "model" in selection:
        assert selection["model"] == _regex_value(
            sorted([MODEL_NAME, "mistral-mini", SERVED_MODEL])
        )
    broken = _run_panels(live, document, selection)
    assert not broken, "\n".join(broken)


def test_every_series_carries_the_node_of_its_pod(live: Live) -> None:
    """The chart's relabeling gives every series the node it was scraped on; the exporter
    itself sets none (honor_labels is off, and its series have no node label)."""
    by_node = live.prometheus.values('count by (node, pod) ({__name__=~"pagewarm_.+"})')
    assert {dict(k)["node"]: dict(k)["pod"] for k in by_node} == {
        t.node: t.pod for t in live.targets
    }


def test_the_node_model_map_holds_each_model_where_it_is(live: Live) -> None:
    """The node x model map: one cell per node and model, from several exporters."""
    document = json.loads((REPO / "grafana" / "node-model-cache.json").read_text())
    (target,) = next(p for p in panels(document) if p["title"] == "Node x model: resident ratio")[
        "targets"
    ]
    selection = _run_variables(live, document, choose=False)
    cells = live.prometheus.values(_interpolate(target["expr"], selection))
    assert {(dict(k)["node"], dict(k)["model"]) for k in cells} == {
        ("gpu-a", MODEL_NAME),
        ("gpu-b", SERVED_MODEL),
        ("gpu-b", "mistral-mini"),
        ("gpu-c", SERVED_MODEL),
    }
    assert all(0 <= v <= 1 for v in cells.values())


def test_every_sidecar_metric_is_on_a_panel(live: Live) -> None:
    """Each pagewarm_sidecar_* family the real sidecar serves is read by a panel."""
    served = {
        r["metric"]["__name__"] for r in live.prometheus.query('{__name__=~"pagewarm_sidecar_.+"}')
    }
    assert len(served) == 12, served
    queries = " ".join(
        t["expr"]
        for path in DASHBOARDS
        for p in panels(json.loads(path.read_text()))
        for t in p.get("targets", [])
    )
    assert {name for name in served if not re.search(rf"\b{name}\b", queries)} == set()


def test_a_selection_that_matches_nothing_empties_the_panels(live: Live) -> None:
    """The variables really filter: another model's name leaves the panels without data
    (except those that are not about a model)."""
    document = json.loads((REPO / "grafana" / "cold-starts-overview.json").read_text())
    selection = _run_variables(live, document, choose=False)
    selection["model"] = "no-such-model"
    broken = _run_panels(live, document, selection)
    emptied = {line.split(" / ")[1] for line in broken}
    assert "Median load time by model and mode (1 h window)" in emptied
    assert "Latest loads" in emptied
    assert "Resident ratio by model" in emptied
    assert "Time to ready (all loads, by load-time bucket)" in emptied


def test_the_rules_file_loads_and_evaluates_cleanly(live: Live) -> None:
    groups = live.prometheus.rules()
    assert {g["name"] for g in groups} == {
        "pagewarm.scheduler",
        "pagewarm.load-duration",
        "pagewarm.residency",
        "pagewarm.warm-nodes",
        "pagewarm.alerts",
    }
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
    # Real load samples flow into the recorded quantiles the alert compares, per namespace.
    cold = live.prometheus.value(
        f'namespace_model_mode:pagewarm_load_duration_seconds:p90_1h{{model="{MODEL_NAME}",'
        'mode="cold",namespace="team-a"}'
    )
    assert cold is not None
    assert 0 < cold <= 1  # a 32 MiB model loads well within the first bucket (1 s)
    # Residency is recorded once per node and model, however many pods measure it.
    recorded = live.prometheus.values("node_model:pagewarm_model_resident_ratio:max")
    assert {(dict(k)["node"], dict(k)["model"]) for k in recorded} >= {
        ("gpu-b", SERVED_MODEL),
        ("gpu-c", SERVED_MODEL),
    }


def test_alert_annotations_expand_in_a_real_prometheus(live: Live) -> None:
    """Active alerts carry expanded annotations (templates with query, humanize, printf).
    Whatever scheduler this machine's disk runs, nothing changed: PagewarmSchedulerChanged
    stays quiet on day one, and the expected-set check is off as shipped."""
    alerts = live.prometheus.alerts()
    for alert in alerts:
        for name, text in alert["annotations"].items():
            assert "error expanding template" not in text, (alert["labels"], name, text)
            assert "<no value>" not in text, (alert["labels"], name, text)
    names = {a["labels"]["alertname"] for a in alerts}
    assert not names & {"PagewarmSchedulerChanged", "PagewarmSchedulerUnexpected"}, alerts
    schedulers = live.prometheus.values("node_device_scheduler:pagewarm_io_scheduler_info:max")
    assert {dict(k)["node"] for k in schedulers} == {t.node for t in live.targets}
