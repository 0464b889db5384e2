"""The PrometheusRule and the dashboard ConfigMaps are the repository's files, read by the
chart through its symlinks (never copies): what promtool tests is what is deployed, changed
only the way kube-prometheus-stack users expect (alerts off by name, severity, for,
keep_firing_for, extra labels and annotations). They are fleet-wide: one release per
cluster (mode monitoring) renders them, the per-model releases do not. The monitors give
every series the node it was scraped on, name the job, and bound what a scrape may return."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import chart
from tests.support import REPO, require_binary

Manifest = dict[str, Any]
ALERTS_DIR = REPO / "alerts"
PER_MODEL = ["sidecar", "init", "node", "sidecar-snippet", "hf-cache"]


def monitoring(overrides: dict[str, Any] | None = None) -> chart.Rendered:
    return chart.render([chart.values_file("monitoring")], overrides)


def rule_spec(overrides: dict[str, Any] | None = None) -> Manifest:
    spec: Manifest = chart.render([], {"mode": "monitoring", **(overrides or {})}).one(
        "PrometheusRule"
    )["spec"]
    return spec


def alerts(spec: Manifest) -> list[Manifest]:
    return [r for g in spec["groups"] for r in g["rules"] if "alert" in r]


def test_chart_files_are_links_to_the_repository() -> None:
    for name, target in (("alerts", chart.RULES_FILE.parent), ("grafana", chart.DASHBOARDS_DIR)):
        link = chart.CHART / "files" / name
        assert link.is_symlink(), f"{link} must be a symlink, not a copy"
        assert link.readlink() == Path("../../..") / name
        assert link.resolve() == target.resolve()


def test_prometheus_rule_is_the_repository_rules_file() -> None:
    """With the defaults, the spec is the rules file as promtool tests it."""
    assert rule_spec() == yaml.safe_load(chart.RULES_FILE.read_text())


def test_monitoring_mode_renders_the_fleet_wide_objects_only() -> None:
    rendered = monitoring()
    assert {m["kind"] for m in rendered.manifests} == {"PrometheusRule", "ConfigMap"}
    rule = rendered.one("PrometheusRule")
    assert rule["metadata"]["namespace"] == "monitoring"  # the namespace override
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("values", PER_MODEL)
def test_per_model_releases_leave_rules_and_dashboards_to_the_monitoring_release(
    values: str,
) -> None:
    kinds = {m["kind"] for m in chart.render([chart.values_file(values)]).manifests}
    assert "PrometheusRule" not in kinds
    dashboards = [
        m
        for m in chart.render([chart.values_file(values)]).of_kind("ConfigMap")
        if "-dashboard-" in m["metadata"]["name"]
    ]
    assert dashboards == []


def test_n_model_releases_and_one_monitoring_release_give_one_copy() -> None:
    """Three models, three releases, plus the monitoring release: the cluster gets each
    rule group once and each dashboard uid once (before, every release brought its own
    copy: N identical groups evaluated N times, N ConfigMaps with one uid, the first
    uninstall deleting the shared dashboard)."""
    manifests: list[Manifest] = []
    for release, model in (("llama", "llama-8b"), ("qwen", "qwen-7b"), ("mistral", "mistral-7b")):
        args = ["template", release, str(chart.CHART), "--namespace", f"team-{release}"]
        args += ["--values", str(chart.values_file("monitoring-on"))]
        args += ["--set", f"model.path=/models/{model}"]
        manifests += [m for m in yaml.safe_load_all(chart.run_helm(*args).stdout) if m]
    args = ["template", "pagewarm", str(chart.CHART), "--namespace", "monitoring"]
    args += ["--values", str(chart.values_file("monitoring"))]
    manifests += [m for m in yaml.safe_load_all(chart.run_helm(*args).stdout) if m]
    groups = [
        g["name"] for m in manifests if m["kind"] == "PrometheusRule" for g in m["spec"]["groups"]
    ]
    assert sorted(groups) == sorted(
        g["name"] for g in yaml.safe_load(chart.RULES_FILE.read_text())["groups"]
    )
    uids = [
        json.loads(text)["uid"]
        for m in manifests
        if m["kind"] == "ConfigMap"
        for key, text in m.get("data", {}).items()
        if key.endswith(".json")
    ]
    assert sorted(uids) == sorted(
        json.loads(p.read_text())["uid"] for p in chart.DASHBOARDS_DIR.glob("*.json")
    )
    assert len([m for m in manifests if m["kind"] == "ServiceMonitor"]) == 3


def promtool_check_rules(spec: Manifest, tmp_path: Path) -> None:
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
    promtool_check_rules(monitoring().one("PrometheusRule")["spec"], tmp_path)


def test_alerts_can_be_disabled_and_tuned_by_name(tmp_path: Path) -> None:
    """kube-prometheus-stack's conventions: an alert off by name, severity and for
    overridden, keep_firing_for for all or one, labels and annotations for routing."""
    spec = rule_spec(
        {
            "monitoring.prometheusRule.disabled": {"PagewarmSchedulerChanged": True},
            "monitoring.prometheusRule.customRules": {
                "PagewarmResidencyDropped": {
                    "severity": "info",
                    "for": "30m",
                    "labels": {"pager": "none"},
                },
                "PagewarmExporterDown": {"keepFiringFor": "15m"},
            },
            "monitoring.prometheusRule.additionalRuleLabels": {"team": "inference"},
            "monitoring.prometheusRule.additionalRuleAnnotations": {"dashboard": "pagewarm"},
            "monitoring.prometheusRule.keepFiringFor": "10m",
        }
    )
    by_name: dict[str, list[Manifest]] = {}
    for rule in alerts(spec):
        by_name.setdefault(rule["alert"], []).append(rule)
    assert "PagewarmSchedulerChanged" not in by_name
    (dropped,) = by_name["PagewarmResidencyDropped"]
    assert dropped["labels"] == {"severity": "info", "pager": "none", "team": "inference"}
    assert dropped["for"] == "30m"
    assert dropped["keep_firing_for"] == "10m"
    (down,) = by_name["PagewarmExporterDown"]
    assert down["keep_firing_for"] == "15m"
    assert down["labels"]["severity"] == "warning"
    for rules in by_name.values():
        for rule in rules:
            assert rule["labels"]["team"] == "inference"
            assert rule["annotations"]["dashboard"] == "pagewarm"
            assert rule["annotations"]["runbook_url"].endswith(f"{rule['alert']}.md")
    # The recording rules are untouched, and what Prometheus gets still passes promtool.
    original = yaml.safe_load(chart.RULES_FILE.read_text())
    records = [r for g in original["groups"] for r in g["rules"] if "record" in r]
    assert [r for g in spec["groups"] for r in g["rules"] if "record" in r] == records
    promtool_check_rules(spec, tmp_path)


def test_unknown_alert_names_are_refused() -> None:
    for key in ("disabled", "customRules"):
        with pytest.raises(chart.RenderError) as raised:
            rule_spec({f"monitoring.prometheusRule.{key}": {"PagewarmColdLoadRegresion": {}}})
        assert "PagewarmColdLoadRegresion" in str(raised.value)


def test_expected_schedulers_and_runbook_base_are_the_fleets_own(tmp_path: Path) -> None:
    """The expected-scheduler check is opt-in: the chart writes the set into the one
    recording rule, and PagewarmSchedulerUnexpected fires for a device outside it (a
    promtool unit test run against the rules as rendered)."""
    spec = rule_spec(
        {
            "monitoring.prometheusRule.expectedSchedulers": ["none", "mq-deadline"],
            "monitoring.prometheusRule.runbookBaseUrl": "https://runbooks.example.com/pagewarm/",
        }
    )
    rules = [r for g in spec["groups"] for r in g["rules"]]
    (expected,) = [r for r in rules if r.get("record") == "pagewarm:io_scheduler_expected:info"]
    assert expected["expr"].count("label_replace") == 2
    urls = {r["annotations"]["runbook_url"] for r in rules if "alert" in r}
    assert urls
    assert all(u.startswith("https://runbooks.example.com/pagewarm/Pagewarm") for u in urls)
    promtool_check_rules(spec, tmp_path)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(spec))
    devices = {
        "gpu-a": ("nvme0n1", "none"),
        "gpu-b": ("vda", "mq-deadline"),
        "gpu-c": ("sda", "bfq"),
    }
    series = [
        {
            "series": f'pagewarm_io_scheduler_info{{job="pagewarm",node="{node}",'
            f'device="{device}",scheduler="{scheduler}"}}',
            "values": "1x60",
        }
        for node, (device, scheduler) in devices.items()
    ]
    unexpected = {
        "exp_labels": {"severity": "warning", "node": "gpu-c", "device": "sda", "scheduler": "bfq"},
        "exp_annotations": {
            "summary": "sda on gpu-c uses I/O scheduler bfq, not an expected one",
            "description": "Block device sda on node gpu-c, which holds model weights, uses "
            "the I/O scheduler bfq; the fleet expects none mq-deadline "
            "(pagewarm:io_scheduler_expected:info). Either the node was never tuned (a new "
            "node image, a new disk type) or the set lacks this device's kind: fix the node, "
            "or add the scheduler to the set.",
            "runbook_url": "https://runbooks.example.com/pagewarm/PagewarmSchedulerUnexpected.md",
        },
    }
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "30s",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "alertname": "PagewarmSchedulerUnexpected",
                        "eval_time": "14m",
                        "exp_alerts": [],
                    },
                    {
                        "alertname": "PagewarmSchedulerUnexpected",
                        "eval_time": "16m",
                        "exp_alerts": [unexpected],
                    },
                ],
            }
        ],
    }
    promtool_test(test, tmp_path)


def promtool_test(test: Manifest, tmp_path: Path) -> None:
    """`promtool test rules` of a unit test over the rendered rules (tmp_path/rules.yml)."""
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [require_binary("promtool"), "test", "rules", "test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_model_replicas_opt_in_to_the_warm_nodes_alert(tmp_path: Path) -> None:
    """Each model's replicas become the one expected-replicas recording, and
    PagewarmModelWarmOnTooFewNodes fires for the model warm on fewer nodes (a promtool
    unit test run against the rules as rendered, model names with slashes included)."""
    replicas = {"llama-8b": 3, "Qwen/Qwen2.5-7B-Instruct": 2}
    spec = rule_spec({"monitoring.prometheusRule.modelReplicas": replicas})
    rules = [r for g in spec["groups"] for r in g["rules"]]
    (expected,) = [
        r for r in rules if r.get("record") == "pagewarm:model_warm_nodes_expected:count"
    ]
    assert expected["expr"].count("label_replace") == 2
    promtool_check_rules(spec, tmp_path)
    warm = {  # node: (llama-8b, Qwen)
        "gpu-a": (1, 1),
        "gpu-b": (1, 1),
        "gpu-c": (0, 0),
    }
    series = [
        {
            "series": f'pagewarm_model_warm{{job="pagewarm",node="{node}",model="{model}"}}',
            "values": f"{value}x30",
        }
        for node, values in warm.items()
        for model, value in zip(replicas, values, strict=True)
    ]
    firing = {
        "exp_labels": {"severity": "warning", "model": "llama-8b"},
        "exp_annotations": {
            "summary": "Model llama-8b is warm on 2 nodes, fewer than its replicas",
            "description": "Model llama-8b is warm in the page cache of 2 nodes "
            "(pagewarm:model_warm_nodes:count, from the node agents' pagewarm_model_warm), "
            "fewer than the 3 replicas it is expected to run. A pod of it that is scaled out "
            "or rescheduled may land on a cold node and load its weights from storage. The "
            "node agents cannot keep it warm on more nodes (memory budget, thrashing, a "
            "priority below other models), or it is not in their model list.",
            "runbook_url": "https://github.com/pagewarm/pagewarm/blob/main/docs/runbooks/"
            "PagewarmModelWarmOnTooFewNodes.md",
        },
    }
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": "pagewarm:model_warm_nodes_expected:count",
                        "eval_time": "1m",
                        "exp_samples": [
                            {
                                "labels": "pagewarm:model_warm_nodes_expected:count"
                                f'{{model="{model}"}}',
                                "value": count,
                            }
                            for model, count in replicas.items()
                        ],
                    }
                ],
                "alert_rule_test": [
                    {"alertname": "PagewarmModelWarmOnTooFewNodes", "eval_time": "14m"},
                    {
                        "alertname": "PagewarmModelWarmOnTooFewNodes",
                        "eval_time": "16m",
                        "exp_alerts": [firing],
                    },
                ],
            }
        ],
    }
    promtool_test(test, tmp_path)


def test_dashboards_are_the_repository_dashboards() -> None:
    files = sorted(chart.DASHBOARDS_DIR.glob("*.json"))
    assert files, f"no dashboards in {chart.DASHBOARDS_DIR}: the chart ships grafana/*.json"
    rendered = {
        key: (config_map, value)
        for config_map in monitoring().of_kind("ConfigMap")
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
    rendered = monitoring(
        {
            "monitoring.dashboards.label": "dashboards.example.com/grafana",
            "monitoring.dashboards.labelValue": "pagewarm",
            "monitoring.dashboards.namespace": "",
        }
    )
    config_maps = rendered.of_kind("ConfigMap")
    assert config_maps
    for config_map in config_maps:
        labels = config_map["metadata"]["labels"]
        assert labels["dashboards.example.com/grafana"] == "pagewarm"
        assert "grafana_dashboard" not in labels
        assert config_map["metadata"]["namespace"] == chart.NAMESPACE


def test_monitoring_objects_are_switchable() -> None:
    off = chart.render([chart.values_file("monitoring-off")])
    kinds = {m["kind"] for m in off.manifests}
    assert kinds == {"Deployment"}
    # A single-model cluster may keep everything in one release, explicitly.
    only_rules = chart.render(
        [chart.values_file("monitoring-off")], {"monitoring.prometheusRule.enabled": True}
    )
    assert {m["kind"] for m in only_rules.manifests} == {"Deployment", "PrometheusRule"}
    rules_off = monitoring({"monitoring.prometheusRule.enabled": False})
    assert {m["kind"] for m in rules_off.manifests} == {"ConfigMap"}


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            {"monitoring.prometheusRule.enabled": False, "monitoring.dashboards.enabled": False},
            "nothing to install",
        ),
        ({"monitoring.serviceMonitor.enabled": True}, "in the releases that run pagewarm"),
    ],
)
def test_monitoring_mode_refuses_what_it_would_ignore(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(chart.RenderError) as raised:
        monitoring(overrides)
    assert says in str(raised.value)


@pytest.mark.parametrize(
    ("kind", "values"), [("ServiceMonitor", "monitoring-on"), ("PodMonitor", "node")]
)
def test_monitors_follow_kube_prometheus_stack_conventions(kind: str, values: str) -> None:
    """node from the pod's node (before the user's relabelings), attachMetadata.node, the
    job named by the pagewarm.io/job label, target labels, a sample limit, a namespace of
    their own."""
    key = "serviceMonitor" if kind == "ServiceMonitor" else "podMonitor"
    overrides: dict[str, Any] = {
        f"monitoring.{key}.namespace": "monitoring",
        f"monitoring.{key}.podTargetLabels": ["app.kubernetes.io/version"],
        f"monitoring.{key}.sampleLimit": 5000,
        f"monitoring.{key}.relabelings": [
            {
                "action": "replace",
                "sourceLabels": ["__meta_kubernetes_node_label_topology_kubernetes_io_zone"],
                "targetLabel": "zone",
            }
        ],
    }
    rendered = chart.render([chart.values_file(values)], overrides)
    monitor = rendered.one(kind)
    spec = monitor["spec"]
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert spec["namespaceSelector"] == {"matchNames": [chart.NAMESPACE]}
    assert spec["attachMetadata"] == {"node": True}
    assert spec["jobLabel"] == "pagewarm.io/job"
    assert spec["podTargetLabels"] == ["app.kubernetes.io/version"]
    assert spec["sampleLimit"] == 5000
    endpoints = spec["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"]
    (endpoint,) = endpoints
    first, second = endpoint["relabelings"]
    assert first == {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "node",
    }
    assert second["targetLabel"] == "zone"
    # The job label's value is on what the monitor reads it from.
    workload = rendered.one("Deployment" if kind == "ServiceMonitor" else "DaemonSet")
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["pagewarm.io/job"] == "pagewarm"
    if kind == "ServiceMonitor":
        service = next(
            s for s in rendered.of_kind("Service") if s["metadata"]["name"].endswith("-metrics")
        )
        assert service["metadata"]["labels"]["pagewarm.io/job"] == "pagewarm"
        assert spec["targetLabels"] == ["app.kubernetes.io/instance"]  # ci/monitoring-on
    defaults = chart.render([chart.values_file(values)]).one(kind)["spec"]
    # null in values.yaml: the mode's default (README "Series per node and sampleLimit").
    assert chart.values_yaml()["monitoring"][key]["sampleLimit"] is None
    assert defaults["sampleLimit"] == (20000 if values == "node" else 2000)
    default_monitor = chart.render([chart.values_file(values)]).one(kind)
    assert default_monitor["metadata"]["namespace"] == chart.NAMESPACE
