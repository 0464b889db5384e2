"""Every panel query and every variable query of every dashboard, run against a real
Prometheus that scrapes the real exporter (in a memory cgroup with a limit, as in a pod)
over a real synthetic model, with real cold, warm and pre-warmed loads recorded by
``pagewarm measure``, and the repo's rules file loaded. Each query must parse and return
data: a query that returns nothing is a broken panel.

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
from tests.prometheus import (
    ExporterHandle,
    PrometheusHandle,
    prometheus_config,
    running_exporter,
    running_prometheus,
)
from tests.support import IN_CI, REPO, pagewarm, require_root

pytestmark = pytest.mark.slow

RULES = REPO / "alerts" / "pagewarm.rules.yml"
DASHBOARDS = sorted((REPO / "grafana").glob("*.json"))
MODEL_NAME = "dashboard-test"
# What Kubernetes service discovery adds to a pod's target; the dashboards filter on them.
TARGET_LABELS = {"namespace": "pagewarm-test", "pod": "pagewarm-exporter-0"}
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
class Live:
    prometheus: PrometheusHandle
    exporter: ExporterHandle
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


def _scrape_with_labels(prometheus: PrometheusHandle, target: str) -> None:
    """Point Prometheus at ``target`` with the labels Kubernetes discovery would add (the
    fixture's config has none), and reload it."""
    config = prometheus_config(
        [], SCRAPE_INTERVAL, rule_files=[RULES], evaluation_interval=SCRAPE_INTERVAL
    )
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target], "labels": TARGET_LABELS}]
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


def _model(directory: Path) -> Path:
    model = directory / "model"
    synth(model, 32 * MiB, shards=4)
    # A FIFO where a shard could be: skipped (never opened), reported as skipped.
    os.mkfifo(model / "stray.safetensors")
    return model


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    directory = tmp_path_factory.mktemp("dashboards")
    model = _model(directory)
    store = directory / "samples.jsonl"
    with (
        _memory_cgroup(2 << 30) as cgroup,
        running_prometheus(
            [], SCRAPE_INTERVAL, rule_files=[RULES], evaluation_interval=SCRAPE_INTERVAL
        ) as prometheus,
        _exporter_in(
            cgroup, "--model-path", model, "--model-name", MODEL_NAME, "--samples", store
        ) as exporter,
    ):
        _scrape_with_labels(prometheus, exporter.target)
        prometheus.wait_for_targets_up()
        prometheus.wait_for(f'pagewarm_build_info{{instance="{exporter.target}"}}')
        start = time.time()
        # Rounds of every mode, each seen by a scrape before the next: rate() needs a
        # series to grow between two scrapes.
        loads = f'sum(pagewarm_loads_total{{model="{MODEL_NAME}"}})'
        for round_number in range(1, ROUNDS + 1):
            for mode in MODES:
                _measure(model, store, mode)
            prometheus.wait_for_value(loads, _equals(round_number * len(MODES)))
        # The recording rules have seen the growth.
        prometheus.wait_for(
            f'model_mode:pagewarm_load_duration_seconds:p50_1h{{model="{MODEL_NAME}"}}',
            lambda result: len(result) == len(MODES),
        )
        yield Live(prometheus, exporter, start)


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
    assert selection["namespace"] == TARGET_LABELS["namespace"]
    assert selection["pod"] == TARGET_LABELS["pod"]
    assert selection["instance"] == _regex_value([live.exporter.target])
    assert selection["model"] == MODEL_NAME
    broken = _run_panels(live, document, selection)
    assert not broken, "\n".join(broken)


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


def test_the_rules_file_loads_and_evaluates_cleanly(live: Live) -> None:
    groups = live.prometheus.rules()
    assert {g["name"] for g in groups} == {
        "pagewarm.scheduler",
        "pagewarm.load-duration",
        "pagewarm.alerts",
    }
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
    # Real load samples flow into the recorded quantiles the alert compares.
    cold = live.prometheus.value(
        f'model_mode:pagewarm_load_duration_seconds:p90_6h{{model="{MODEL_NAME}",mode="cold"}}'
    )
    assert cold is not None
    assert 0 < cold <= 1  # a 32 MiB model loads well within the first bucket (1 s)


def test_alert_annotations_expand_in_a_real_prometheus(live: Live) -> None:
    """Active alerts carry expanded annotations (templates with query, humanize, printf).
    The test machine's disk is not on the shipped expected scheduler ("none") unless it is
    NVMe: PagewarmSchedulerChanged is then pending for it, and says what it expected."""
    schedulers = {
        r["metric"]["scheduler"] for r in live.prometheus.query("pagewarm_io_scheduler_info")
    }
    alerts = live.prometheus.alerts()
    for alert in alerts:
        for name, text in alert["annotations"].items():
            assert "error expanding template" not in text, (alert["labels"], name, text)
            assert "<no value>" not in text, (alert["labels"], name, text)
    if schedulers - {"none"}:
        changed = [a for a in alerts if a["labels"]["alertname"] == "PagewarmSchedulerChanged"]
        assert changed, alerts
        assert changed[0]["state"] == "pending"  # for: 15m
        assert (
            "the fleet expects none (pagewarm:io_scheduler_expected:info)"
            in (changed[0]["annotations"]["description"])
        )
