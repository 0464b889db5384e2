"""The PrometheusRule and the dashboard ConfigMaps are the repository's files, read by the
chart through its symlinks (never copies): what promtool tests is what is deployed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import chart
from tests.support import require_binary


def monitoring_on() -> chart.Rendered:
    return chart.render([chart.values_file("monitoring-on")])


def test_chart_files_are_links_to_the_repository() -> None:
    for name, target in (("alerts", chart.RULES_FILE.parent), ("grafana", chart.DASHBOARDS_DIR)):
        link = chart.CHART / "files" / name
        assert link.is_symlink(), f"{link} must be a symlink, not a copy"
        assert link.readlink() == Path("../../..") / name
        assert link.resolve() == target.resolve()


def test_prometheus_rule_is_the_repository_rules_file() -> None:
    rule = monitoring_on().one("PrometheusRule")
    assert rule["spec"] == yaml.safe_load(chart.RULES_FILE.read_text())
    assert rule["spec"]["groups"], "the rules file has no groups"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def promtool_check_rules(spec: dict[str, object], tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool, "check", "rules", str(extracted)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    promtool_check_rules(monitoring_on().one("PrometheusRule")["spec"], tmp_path)


def test_expected_schedulers_and_runbook_base_are_the_fleets_own(tmp_path: Path) -> None:
    rule = chart.render(
        [chart.values_file("monitoring-on")],
        {
            "monitoring.prometheusRule.expectedSchedulers": ["none", "mq-deadline"],
            "monitoring.prometheusRule.runbookBaseUrl": "https://runbooks.example.com/pagewarm/",
        },
    ).one("PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    (expected,) = [r for r in rules if r.get("record") == "pagewarm:io_scheduler_expected:info"]
    assert expected["expr"].count("label_replace") == 2
    assert '"mq-deadline"' in expected["expr"]
    urls = {r["annotations"]["runbook_url"] for r in rules if "alert" in r}
    assert urls
    assert all(u.startswith("https://runbooks.example.com/pagewarm/Pagewarm") for u in urls)
    promtool_check_rules(rule["spec"], tmp_path)


def test_dashboards_are_the_repository_dashboards() -> None:
    files = sorted(chart.DASHBOARDS_DIR.glob("*.json"))
    assert files, f"no dashboards in {chart.DASHBOARDS_DIR}: the chart ships grafana/*.json"
    rendered = {
        key: (config_map, value)
        for config_map in monitoring_on().of_kind("ConfigMap")
        for key, value in config_map["data"].items()
        if key.endswith(".json")
    }
    assert sorted(rendered) == [f.name for f in files]
    for file in files:
        config_map, content = rendered[file.name]
        assert content.rstrip("\n") == file.read_text().rstrip("\n")
        assert json.loads(content) == json.loads(file.read_text())
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "monitoring"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "pagewarm"}


def test_dashboard_label_is_configurable() -> None:
    if not list(chart.DASHBOARDS_DIR.glob("*.json")):
        pytest.fail(f"no dashboards in {chart.DASHBOARDS_DIR}")
    rendered = chart.render(
        [chart.values_file("monitoring-on")],
        {
            "monitoring.dashboards.label": "dashboards.example.com/grafana",
            "monitoring.dashboards.labelValue": "pagewarm",
            "monitoring.dashboards.namespace": "",
        },
    )
    for config_map in rendered.of_kind("ConfigMap"):
        labels = config_map["metadata"]["labels"]
        assert labels["dashboards.example.com/grafana"] == "pagewarm"
        assert "grafana_dashboard" not in labels
        assert config_map["metadata"]["namespace"] == chart.NAMESPACE


def test_monitoring_objects_are_switchable() -> None:
    off = chart.render([chart.values_file("monitoring-off")])
    kinds = {m["kind"] for m in off.manifests}
    assert kinds == {"Deployment"}
    only_rules = chart.render(
        [chart.values_file("monitoring-off")], {"monitoring.prometheusRule.enabled": True}
    )
    assert {m["kind"] for m in only_rules.manifests} == {"Deployment", "PrometheusRule"}
