"""The alert and recording rules: promtool's own checks and unit tests, and the
conventions every alert keeps (severity, annotations, a runbook that exists, a test that
fires it and one that keeps it silent)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring import fleet, rule_cost
from tests.support import REPO, require_binary

RULES = REPO / "alerts" / "pagewarm.rules.yml"
TESTS = sorted((REPO / "alerts" / "tests").glob("*.yml"))
RUNBOOKS = REPO / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/pagewarm/pagewarm/blob/main/docs/runbooks/"
SEVERITIES = {"critical", "warning", "info"}
# level:metric:operations (https://prometheus.io/docs/practices/rules/)
RECORDING_NAME = re.compile(r"[a-z][a-z_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _promtool(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def _promtool_test_rules(*tests: Path) -> subprocess.CompletedProcess[str]:
    """``promtool test rules`` that must pass, run once more after a failure. promtool 2.42
    (Debian's) now and then returns a 7-day p90 one load short (2 runs in about 150 here:
    one ``le`` bucket missing a sample its ``+Inf`` sibling has) with the group order
    fixed, the inputs identical and no float or window-edge ambiguity: a race inside its
    test storage, which compacts 24 h blocks in the background while the rules are
    evaluated. Rules that are wrong fail both runs; only that race passes on the second."""
    result = _promtool("test", "rules", *tests)
    if result.returncode != 0:
        result = _promtool("test", "rules", *tests)
    return result


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = _promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert len(TESTS) >= 5
    result = _promtool_test_rules(*TESTS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(TESTS), output


# Each mutation weakens one guard of one rule (name, field, and the new value or an
# (old, new) replacement in the expression); some unit test must then fail, so the tests
# above check the guards rather than pass whatever the rules say.
Mutation = tuple[str, str, str | tuple[str, str]]
MUTATIONS: dict[str, Mutation] = {
    "regression floor": ("PagewarmColdLoadRegression", "expr", ("_6h > 30", "_6h > 1")),
    "regression for": ("PagewarmColdLoadRegression", "for", "10m"),
    "regression baseline": (
        "PagewarmColdLoadRegression",
        "expr",
        ("> 1.5 * (", "> 0 * ("),
    ),
    "regression minimum loads": (
        "PagewarmColdLoadRegression",
        "expr",
        ("increase6h >= 3", "increase6h >= 1"),
    ),
    "regression modes": (
        "PagewarmColdLoadRegression",
        "expr",
        ('{mode=~"cold|prewarm_cold"}', ""),
    ),
    "recorded increase keeps namespace": (
        "namespace_model_mode_le:pagewarm_load_duration_seconds_bucket:increase1h",
        "expr",
        ("cluster, namespace, model", "cluster, model"),
    ),
    "prewarm born with failures": (
        "PagewarmPrewarmFailing",
        "expr",
        ("unless pagewarm_prewarm_runs_total offset 1h", "> 1e9"),
    ),
    "prewarm old failures": (
        "PagewarmPrewarmFailing",
        "expr",
        ('unless ignoring (outcome) pagewarm_prewarm_runs_total{outcome="ok"} > 0', ""),
    ),
    "prewarm counts partial": (
        "PagewarmPrewarmFailing",
        "expr",
        ('{outcome="failed"}[1h]', '{outcome=~"failed|partial"}[1h]'),
    ),
    "residency was resident": ("PagewarmResidencyDropped", "expr", (">= 0.9", ">= 0.6")),
    "residency for": ("PagewarmResidencyDropped", "for", "0m"),
    "residency of models nobody serves": (
        "PagewarmResidencyDropped",
        "expr",
        ("pagewarm_load_duration_seconds_count)", "pagewarm_model_resident_ratio)"),
    ),
    "residency per pod": (
        "node_model:pagewarm_model_resident_ratio:max",
        "expr",
        (
            "max by (cluster, node, model) (pagewarm_model_resident_ratio)",
            "pagewarm_model_resident_ratio",
        ),
    ),
    "untrusted": ("PagewarmResidencyUntrusted", "expr", ("== 0", "== 1")),
    "untrusted for": ("PagewarmResidencyUntrusted", "for", "1m"),
    "scheduler once per node": (
        "node_device_scheduler:pagewarm_io_scheduler_info:max",
        "expr",
        (
            "max by (cluster, node, device, scheduler) (pagewarm_io_scheduler_info)",
            "pagewarm_io_scheduler_info",
        ),
    ),
    "scheduler change without history": (
        "PagewarmSchedulerChanged",
        "expr",
        ("and on (cluster, node, device)", "or on (cluster, node, device)"),
    ),
    "scheduler change window": ("PagewarmSchedulerChanged", "expr", ("[1h] offset 1h", "[1h]")),
    "scheduler for": ("PagewarmSchedulerChanged", "for", "0m"),
    "expected schedulers opt-in": (
        "PagewarmSchedulerUnexpected",
        "expr",
        ("and on () count(pagewarm:io_scheduler_expected:info) > 0", ""),
    ),
    "expected scheduler shipped": (
        "pagewarm:io_scheduler_expected:info",
        "expr",
        ("vector(1) unless vector(1)", 'label_replace(vector(1), "scheduler", "none", "", "")'),
    ),
    "exporter not scraped": (
        "PagewarmExporterDown",
        "expr",
        ("unless on (cluster, namespace)", "and on (cluster, namespace)"),
    ),
    "exporter absent() at zero": (
        "PagewarmExporterDown",
        "expr",
        (
            'kube_pod_container_status_running{container=~"pagewarm|pagewarm-exporter"} == 1',
            'absent(up{job=~".*pagewarm.*"})',
        ),
    ),
    "exporter for": ("PagewarmExporterDown", "for", "0m"),
    "warm nodes once per node": (
        "pagewarm:model_warm_nodes:count",
        "expr",
        ("(max by (cluster, node, model) (pagewarm_model_warm))", "(pagewarm_model_warm)"),
    ),
    "warm nodes below replicas": (
        "PagewarmModelWarmOnTooFewNodes",
        "expr",
        ("< on (model)", "<= on (model)"),
    ),
    "warm nodes of a model no agent reports": (
        "PagewarmModelWarmOnTooFewNodes",
        "expr",
        (
            "unless on (model) pagewarm:model_warm_nodes:count",
            "and on (model) pagewarm:model_warm_nodes:count",
        ),
    ),
    "warm nodes for": ("PagewarmModelWarmOnTooFewNodes", "for", "5m"),
    "warm nodes expected shipped": (
        "pagewarm:model_warm_nodes_expected:count",
        "expr",
        ("vector(1) unless vector(1)", 'label_replace(vector(9), "model", "qwen-7b", "", "")'),
    ),
    "recorded quantile": (
        "namespace_model_mode:pagewarm_load_duration_seconds:p90_7d",
        "expr",
        ("histogram_quantile(0.9,", "histogram_quantile(0.95,"),
    ),
}


# Where each rule's unit tests are.
TEST_OF = {
    "PagewarmColdLoadRegression": "cold_load_regression.yml",
    "namespace_model_mode:pagewarm_load_duration_seconds:p90_7d": "cold_load_regression.yml",
    "namespace_model_mode_le:pagewarm_load_duration_seconds_bucket:increase1h": (
        "cold_load_regression.yml"
    ),
    "PagewarmPrewarmFailing": "prewarm_failing.yml",
    "node_model:pagewarm_model_resident_ratio:max": "residency.yml",
    "PagewarmResidencyDropped": "residency.yml",
    "PagewarmResidencyUntrusted": "residency.yml",
    "node_device_scheduler:pagewarm_io_scheduler_info:max": "scheduler_changed.yml",
    "pagewarm:io_scheduler_expected:info": "scheduler_changed.yml",
    "PagewarmSchedulerChanged": "scheduler_changed.yml",
    "PagewarmSchedulerUnexpected": "scheduler_changed.yml",
    "PagewarmExporterDown": "exporter_down.yml",
    "pagewarm:model_warm_nodes:count": "warm_nodes.yml",
    "pagewarm:model_warm_nodes_expected:count": "warm_nodes.yml",
    "PagewarmModelWarmOnTooFewNodes": "warm_nodes.yml",
}


def _mutant(name: str, field: str, change: str | tuple[str, str]) -> str:
    document = yaml.safe_load(RULES.read_text())
    rules = [
        r
        for g in document["groups"]
        for r in g["rules"]
        if name in (r.get("alert"), r.get("record"))
    ]
    assert rules, f"no rule {name}: update the mutation"
    for rule in rules:
        if isinstance(change, tuple):
            old, new = change
            assert old in rule[field], f"{old!r} not in {name}'s {field}: update the mutation"
            rule[field] = rule[field].replace(old, new)
        else:
            rule[field] = change
    return yaml.safe_dump(document, sort_keys=False)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_unit_tests_catch_a_weakened_rule(mutation: str, tmp_path: Path) -> None:
    alerts = tmp_path / "alerts"
    (alerts / "tests").mkdir(parents=True)
    (alerts / RULES.name).write_text(_mutant(*MUTATIONS[mutation]))
    for test in TESTS:
        shutil.copy(test, alerts / "tests" / test.name)
    check = _promtool("check", "rules", alerts / RULES.name)
    assert check.returncode == 0, f"the mutant must stay valid: {check.stdout}{check.stderr}"
    tests = alerts / "tests" / TEST_OF[MUTATIONS[mutation][0]]
    result = _promtool("test", "rules", tests)
    assert result.returncode != 0, f"{tests.name} did not notice {mutation!r}"


def test_the_unmutated_rules_pass_the_same_way(tmp_path: Path) -> None:
    """The mutants are written with yaml.safe_dump: the original, written the same way, passes
    (so a mutant fails because of its mutation, not because of the round trip)."""
    alerts = tmp_path / "alerts"
    (alerts / "tests").mkdir(parents=True)
    (alerts / RULES.name).write_text(yaml.safe_dump(yaml.safe_load(RULES.read_text())))
    for test in TESTS:
        shutil.copy(test, alerts / "tests" / test.name)
    result = _promtool_test_rules(*sorted((alerts / "tests").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    alerts = _alerts()
    names = {a["alert"] for a in alerts}
    assert names == {
        "PagewarmColdLoadRegression",
        "PagewarmPrewarmFailing",
        "PagewarmResidencyDropped",
        "PagewarmResidencyUntrusted",
        "PagewarmSchedulerChanged",
        "PagewarmSchedulerUnexpected",
        "PagewarmExporterDown",
        "PagewarmModelWarmOnTooFewNodes",
    }
    readme = (RUNBOOKS / "README.md").read_text()
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip(), name
        assert len(annotations["description"]) > 100, name
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}{name}.md", name
        runbook = RUNBOOKS / f"{name}.md"
        assert runbook.is_file(), runbook
        text = runbook.read_text()
        assert text.startswith(f"# {name}\n"), runbook
        assert "## What to check" in text and "## What to do" in text, runbook
        assert f"[{name}.md]({name}.md)" in readme, name


def test_the_runbook_base_is_one_string_to_replace() -> None:
    text = RULES.read_text()
    urls = re.findall(r"runbook_url: (\S+)", text)
    assert len(urls) == len(_alerts())
    assert all(url.startswith(RUNBOOK_BASE) for url in urls)
    # Outside runbook_url the base appears only in the header comment that documents it.
    assert text.count(RUNBOOK_BASE) == len(urls) + 1


def _alert_tests() -> list[dict[str, Any]]:
    return [
        case
        for path in TESTS
        for group in yaml.safe_load(path.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
    ]


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = _alert_tests()
    for alert in {a["alert"] for a in _alerts()}:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c.get("exp_alerts") for c in mine), f"no test where {alert} fires"
        assert any(not c.get("exp_alerts") for c in mine), f"no test where {alert} is silent"


def test_every_rule_file_test_loads_the_real_rules_file() -> None:
    for path in TESTS:
        assert yaml.safe_load(path.read_text())["rule_files"] == ["../pagewarm.rules.yml"], path


RECORDED_NAME = re.compile(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+")


def _recorded_in(document: dict[str, Any]) -> dict[str, str]:
    """Each recorded series' name: the group that records it."""
    return {
        rule["record"]: group["name"]
        for group in document["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def _groups_reading_recordings() -> dict[str, set[str]]:
    """Each group's name: the groups whose recordings its rules read (itself included)."""
    document = yaml.safe_load(RULES.read_text())
    recorded_in = _recorded_in(document)
    return {
        group["name"]: {
            recorded_in[name]
            for rule in group["rules"]
            for name in RECORDED_NAME.findall(rule["expr"])
            if name in recorded_in
        }
        for group in document["groups"]
    }


def test_no_group_reads_a_series_recorded_by_a_later_group() -> None:
    """The file's group order is a dependency order: a group reads recordings of its own
    and earlier groups only (so the order the unit tests give promtool is this one)."""
    reads = _groups_reading_recordings()
    order = list(reads)
    for group, sources in reads.items():
        later = {s for s in sources if order.index(s) > order.index(group)}
        assert not later, f"{group} reads series recorded by the later group(s) {later}"


@pytest.mark.parametrize("path", TESTS, ids=[t.name for t in TESTS])
def test_every_rule_file_test_orders_every_group(path: Path) -> None:
    """promtool 2.42 evaluates groups a test file does not order in Go map order, a new one
    each run (a partial order: it sorts by position in group_eval_order, unstably). Each
    test names every group, once, in the rules file's (dependency) order."""
    groups = list(_groups_reading_recordings())
    assert yaml.safe_load(path.read_text()).get("group_eval_order") == groups, (
        f"{path.name}: group_eval_order must list {groups}"
    )


def test_recording_rules_follow_the_naming_convention() -> None:
    records = [rule["record"] for rule in _rules() if "record" in rule]
    assert records
    for name in records:
        assert RECORDING_NAME.fullmatch(name), name


@pytest.mark.parametrize(
    ("group_name", "recording", "alert"),
    [
        (
            "pagewarm.scheduler",
            "pagewarm:io_scheduler_expected:info",
            "PagewarmSchedulerUnexpected",
        ),
        (
            "pagewarm.warm-nodes",
            "pagewarm:model_warm_nodes_expected:count",
            "PagewarmModelWarmOnTooFewNodes",
        ),
    ],
    ids=["expected-schedulers", "model-replicas"],
)
def test_an_opt_in_check_is_one_expression(group_name: str, recording: str, alert: str) -> None:
    """The chart opts in (the expected schedulers, each model's replicas) by replacing this
    one recording's expression; as shipped it records nothing (the check is opt-in), and it
    is evaluated before the alert that reads it (same group, earlier)."""
    document = yaml.safe_load(RULES.read_text())
    (group,) = [g for g in document["groups"] if g["name"] == group_name]
    names = [r.get("record") or r.get("alert") for r in group["rules"]]
    expected = names.index(recording)
    assert names.index(alert) > expected
    assert group["rules"][expected] == {"record": recording, "expr": "vector(1) unless vector(1)"}
    assert RULES.read_text().count(f"record: {recording}\n") == 1


def test_the_cold_load_fleet_test_is_the_generated_one() -> None:
    """alerts/tests/cold_load_regression.yml is written by tests/monitoring/fleet.py."""
    assert fleet.OUTPUT.read_text() == fleet.render(), (
        "run: .venv/bin/python -m tests.monitoring.fleet"
    )


# Series that the exporters, Prometheus or kube-state-metrics write: one per pod (or per
# container, per target), so they churn with pods.
def _per_pod(name: str) -> bool:
    return ":" not in name


def test_rules_read_per_pod_series_an_hour_back_at_most() -> None:
    """What a rule touches follows the pods alive in the last hour, never a week of churn:
    a per-pod series is read over at most 1 h (its offset included), and a recording read
    over a longer window is aggregated away from pods and targets."""
    document = yaml.safe_load(RULES.read_text())
    records = {
        r["record"]: r["expr"] for g in document["groups"] for r in g["rules"] if "record" in r
    }
    for name, expr in rule_cost.rules():
        for selector in rule_cost.selectors(expr):
            metric = selector.text.split("{")[0]
            reach = rule_cost.hours_of(selector.window) + rule_cost.hours_of(selector.offset)
            if _per_pod(metric):
                assert reach <= 1.1, f"{name} reads {metric} {reach} h back"
            elif reach > 1.1:
                chain = [metric]
                while chain[-1] in records and not re.search(r"\bby \(", records[chain[-1]]):
                    chain += [s.text.split("{")[0] for s in rule_cost.selectors(records[chain[-1]])]
                aggregated = [records[m] for m in chain if m in records]
                assert any(re.search(r"\bby \(", e) for e in aggregated), (name, chain)
                for by in re.findall(r"\bby \(([^)]*)\)", " ".join(aggregated)):
                    assert not {"pod", "instance"} & {b.strip() for b in by.split(",")}, (name, by)


def test_alerts_read_recorded_series_of_their_own_group_only() -> None:
    """Groups are evaluated independently: an alert reading another group's recording sees
    a value up to one interval old (and none at all where the interval exceeds the 5 minute
    lookback). Each alert reads recordings of its own group, recorded before it."""
    document = yaml.safe_load(RULES.read_text())
    recorded_in = _recorded_in(document)
    for group in document["groups"]:
        recorded_before: set[str] = set()
        for rule in group["rules"]:
            if "record" in rule:
                recorded_before.add(rule["record"])
                continue
            for name in re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["expr"]):
                assert name in recorded_before, (
                    f"{rule['alert']} reads {name}, recorded in {recorded_in.get(name)}"
                )
