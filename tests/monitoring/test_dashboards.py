"""The committed dashboards: generated from grafana/*.py, and clean under the lint pass
(which must also catch what it claims to)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel

from exporter.linux.permissions import OWNER_REMEDY
from grafana import generate, sidecars
from grafana.lint import lint, lint_file, panels, recorded_series
from tests.support import REPO

DASHBOARDS = sorted((REPO / "grafana").glob("*.json"))


def test_the_committed_dashboards_are_the_generated_ones() -> None:
    expected = generate.generated()
    assert sorted(p.name for p in DASHBOARDS) == sorted(expected)
    for path in DASHBOARDS:
        assert path.read_text() == expected[path.name], (
            f"{path.name} differs from what grafana/*.py generate: run python -m grafana.generate"
        )


def test_generate_check_names_a_stale_file(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "grafana.generate", "--directory", str(tmp_path), *args]
        return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False)

    assert run().returncode == 0
    assert run("--check").returncode == 0
    stale = tmp_path / "node-model-cache.json"
    stale.write_text(stale.read_text().replace("Residency by file", "Residency per file"))
    result = run("--check")
    assert result.returncode == 1
    assert "node-model-cache.json: out of date" in result.stdout


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_passes_the_lint(path: Path) -> None:
    problems = lint_file(path)
    assert not problems, "\n".join(map(str, problems))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_foundation_sdk_reads_the_dashboard_back(path: Path) -> None:
    """The SDK's own model of a Grafana dashboard accepts the JSON (panels, queries, variables
    all typed), as Grafana's schema would."""
    register_default_plugins()
    document = json.loads(path.read_text())
    model = DashboardModel.from_json(document)
    assert model.uid == document["uid"]
    assert model.templating is not None and model.templating.list_val is not None
    names = [v.name for v in model.templating.list_val]
    chain = ["datasource", "cluster", "namespace", "node", "pod", "instance"]
    assert names == (chain if document["uid"] == sidecars.UID else [*chain, "model"])


def test_the_dashboards_cover_what_the_issue_lists() -> None:
    def exprs(name: str) -> str:
        document = json.loads((REPO / "grafana" / name).read_text())
        return " ".join(t["expr"] for p in panels(document) for t in p.get("targets", []))

    overview = exprs("cold-starts-overview.json")
    for needle in (
        # fleet cold-start counts over 1 h and 24 h by mode, the time-to-ready heatmap
        "sum by (mode) (increase(pagewarm_load_duration_seconds_count{",
        "[1h]))",
        "[24h]))",
        "sum by (le) (increase(pagewarm_load_duration_seconds_bucket{",
        # quantiles that follow every variable, and the recorded per-namespace baseline
        "histogram_quantile(0.5, sum by (namespace, model, mode, le) (increase("
        'pagewarm_load_duration_seconds_bucket{model=~"$model", cluster=~"$cluster", '
        'namespace=~"$namespace", node=~"$node", pod=~"$pod"',
        "namespace_model_mode:pagewarm_load_duration_seconds:p90_7d",
        "pagewarm_last_load_duration_seconds",
        "pagewarm_last_prewarm_duration_seconds",
        "pagewarm_last_prewarm_throughput_bytes_per_second",
        "pagewarm_model_resident_ratio",
        "pagewarm_io_scheduler_info",
        "pagewarm_memory_available_bytes",
        "pagewarm_model_size_bytes",
    ):
        assert needle in overview, needle
    # rare events are counted over an hour, not a per-second rate scaled up
    assert "* 3600" not in overview
    cache = exprs("node-model-cache.json")
    for needle in (
        "max by (node, model) (pagewarm_model_resident_ratio{",
        "pagewarm_model_resident_ratio",
        "pagewarm_file_resident_bytes",
        "pagewarm_model_evicted_bytes",
        "pagewarm_model_recently_evicted_bytes",
        "pagewarm_io_scheduler_info",
        "pagewarm_block_device_read_ahead_bytes",
        "pagewarm_block_device_rotational",
        # the node agents' warm map, and per model its warm nodes (issue 14)
        "max by (node, model) (pagewarm_model_warm{",
        'pagewarm:model_warm_nodes:count{cluster=~"$cluster", model=~"$model"}',
    ):
        assert needle in cache, needle
    sidecar = exprs("sidecars.json")
    for metric in (
        "gate_open",
        "gate_info",
        "gate_timed_out",
        "gate_opened_after_seconds",
        "prewarm_progress_ratio",
        "prewarm_read_bytes",
        "vllm_starts_total",
        "vllm_untimed_starts_total",
        "vllm_ready",
        "rewarm_bytes_total",
        "keepwarm_thrashing",
        "mlocked_bytes",
    ):
        assert f"pagewarm_sidecar_{metric}{{" in sidecar, metric


def test_the_residency_remedy_is_the_exporters_own() -> None:
    """One text for what to do about untrusted residency: the exporter's reason, the
    dashboard and the runbook quote the same constant (no CAP_FOWNER advice that
    Kubernetes makes ineffective for non-root UIDs)."""
    document = json.loads((REPO / "grafana" / "cold-starts-overview.json").read_text())
    (panel,) = [p for p in panels(document) if p["title"] == "Residency trusted"]
    assert OWNER_REMEDY in panel["description"]
    assert "give the exporter container CAP_FOWNER" not in json.dumps(document)
    runbook = (REPO / "docs" / "runbooks" / "PagewarmResidencyUntrusted.md").read_text()
    assert OWNER_REMEDY in " ".join(runbook.split())


# What the lint must catch: a mutation of a good dashboard, and the rule it breaks.
def _first_panel(document: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in panels(document) if p["type"] != "row")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        node: Any = _first_panel(document)
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value

    return mutate


def _replace_expr(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        for panel in panels(document):
            for target in panel.get("targets", []):
                if old in target["expr"]:
                    target["expr"] = target["expr"].replace(old, new)
                    return
        raise AssertionError(f"{old!r} is in no query: update the mutation")

    return mutate


def _duplicate_id(document: dict[str, Any]) -> None:
    content = [p for p in panels(document) if p["type"] != "row"]
    content[1]["id"] = content[0]["id"]


def _drop_variable(name: str) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        variables = document["templating"]["list"]
        document["templating"]["list"] = [v for v in variables if v["name"] != name]

    return mutate


def _add_unused_variable(document: dict[str, Any]) -> None:
    variable = copy.deepcopy(document["templating"]["list"][-1])
    variable["name"] = "unused"
    document["templating"]["list"].append(variable)


def _overlap(document: dict[str, Any]) -> None:
    content = [p for p in panels(document) if p["type"] != "row"]
    content[1]["gridPos"] = dict(content[0]["gridPos"])


LINT_CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no unit": (_set("fieldConfig.defaults.unit", ""), "panel-units"),
    "unknown unit": (_set("fieldConfig.defaults.unit", "seconds"), "panel-units"),
    "no description": (_set("description", ""), "panel-description"),
    "description without advice": (_set("description", "x" * 200), "panel-description"),
    "fixed datasource": (
        _set("datasource", {"type": "prometheus", "uid": "P1"}),
        "panel-datasource",
    ),
    "query datasource": (_set("targets.0.datasource", {"uid": "P1"}), "panel-datasource"),
    "null options": (_set("options", None), "panel-options"),
    "duplicate refId": (_set("targets.1.refId", "A"), "target-refid"),
    "duplicate id": (_duplicate_id, "panel-ids"),
    "overlap": (_overlap, "panel-grid"),
    "rate with fixed range": (
        _replace_expr("[$__rate_interval]", "[5m]"),
        "target-rate-interval",
    ),
    "unfiltered instance": (_replace_expr(', instance=~"$instance"', ""), "target-filters"),
    "unfiltered model": (
        _replace_expr(
            'pagewarm_last_load_duration_seconds{model=~"$model", ',
            "pagewarm_last_load_duration_seconds{",
        ),
        "target-filters",
    ),
    "unknown recording": (_replace_expr(":p50_7d", ":p50_8d"), "target-filters"),
    "recording without namespace": (
        _replace_expr(':p50_7d{cluster=~"$cluster", namespace=~"$namespace", ', ":p50_7d{"),
        "target-filters",
    ),
    "unfiltered node": (_replace_expr(', node=~"$node"', ""), "target-filters"),
    "increase over another fixed window": (_replace_expr("[24h]", "[2h]"), "target-rate-interval"),
    "rate over an event window": (
        _replace_expr("increase(pagewarm_loads_total", "rate(pagewarm_loads_total"),
        "target-rate-interval",
    ),
    "undefined variable": (_drop_variable("pod"), "template-variables"),
    "unused variable": (_add_unused_variable, "template-variables"),
    "no datasource variable": (_drop_variable("datasource"), "template-datasource"),
    "no annotations list": (lambda d: d.update(annotations={}), "dashboard"),
}


@pytest.mark.parametrize("case", sorted(LINT_CASES))
def test_the_lint_catches(case: str) -> None:
    document = json.loads((REPO / "grafana" / "cold-starts-overview.json").read_text())
    mutate, rule = LINT_CASES[case]
    mutate(document)
    problems = lint(document, recorded_series())
    assert rule in {p.rule for p in problems}, problems
