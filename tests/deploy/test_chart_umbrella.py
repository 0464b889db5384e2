"""The chart as a subchart of an umbrella chart, as platform teams install it: Helm passes
`global` to every subchart (and validates it against the subchart's schema), with keys
that belong to the other subcharts too. Built with `helm dependency build` from the chart
directory, then linted and rendered by the real helm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import chart

Manifest = dict[str, Any]
MODEL = {
    "path": "/models/Llama-3.1-8B-Instruct",
    "sizeBytes": "15Gi",
    "volume": {"claimName": "models"},
}


def umbrella(tmp_path: Path, values: dict[str, Any], aliases: tuple[str, ...] = ()) -> Path:
    """An umbrella chart depending on this chart (under each alias, or once as itself)."""
    root = tmp_path / "llm-platform"
    root.mkdir()
    version = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())["version"]
    dependency = {"name": "pagewarm", "version": version, "repository": f"file://{chart.CHART}"}
    dependencies = [{**dependency, "alias": a} for a in aliases] or [dependency]
    (root / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "llm-platform",
                "version": "1.0.0",
                "dependencies": dependencies,
            }
        )
    )
    (root / "values.yaml").write_text(yaml.safe_dump(values))
    # An umbrella has objects of its own, too.
    (root / "templates").mkdir()
    (root / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-platform\n"
        "data:\n  owner: inference-platform\n"
    )
    chart.run_helm("dependency", "build", str(root))
    assert list((root / "charts").glob("pagewarm-*.tgz"))
    return root


def lint_and_render(root: Path) -> list[Manifest]:
    lint = chart.run_helm("lint", "--strict", str(root), check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = chart.run_helm("template", "platform", str(root), "--namespace", "llm").stdout
    return [m for m in yaml.safe_load_all(rendered) if m]


def images(manifests: list[Manifest]) -> set[str]:
    return {
        c["image"]
        for m in manifests
        if m["kind"] in ("Deployment", "DaemonSet")
        for c in chart.containers(chart.pod_spec(m))
    }


def test_installs_as_a_subchart_without_global_values(tmp_path: Path) -> None:
    """Helm passes `global: {}` even when the umbrella sets none: the schema accepts it."""
    manifests = lint_and_render(umbrella(tmp_path, {"pagewarm": {"model": MODEL}}))
    (deployment,) = [m for m in manifests if m["kind"] == "Deployment"]
    assert deployment["metadata"]["name"] == "platform-pagewarm"
    assert images(manifests) == {"ghcr.io/pagewarm/pagewarm:0.1.0", "vllm/vllm-openai:v0.11.0"}


def test_installs_as_a_subchart_with_global_values(tmp_path: Path) -> None:
    """The umbrella's globals: a registry mirror and pull secret pagewarm follows, and keys
    of other subcharts that pagewarm's schema does not know and must let through."""
    values = {
        "global": {
            "imageRegistry": "registry.internal:5000",
            "imagePullSecrets": [{"name": "internal"}],
            "storageClass": "fast-ssd",
            "postgresql": {"auth": {"existingSecret": "db"}},
        },
        "pagewarm": {"model": MODEL, "monitoring": {"serviceMonitor": {"enabled": True}}},
    }
    manifests = lint_and_render(umbrella(tmp_path, values))
    assert images(manifests) == {
        "registry.internal:5000/pagewarm/pagewarm:0.1.0",
        "registry.internal:5000/vllm/vllm-openai:v0.11.0",
    }
    (deployment,) = [m for m in manifests if m["kind"] == "Deployment"]
    assert chart.pod_spec(deployment)["imagePullSecrets"] == [{"name": "internal"}]
    assert {m["kind"] for m in manifests} >= {"ServiceMonitor", "Service"}


def test_two_aliases_select_their_own_pods(tmp_path: Path) -> None:
    """One umbrella, two models (the chart under two aliases): each metrics Service and
    monitor selects its own pods, never the other's (one release name for both)."""
    values = {
        "llama": {"model": MODEL},
        "qwen": {
            "model": {**MODEL, "path": "/models/Qwen2.5-7B-Instruct"},
            "monitoring": {"podMonitor": {"enabled": True}},
        },
    }
    manifests = lint_and_render(umbrella(tmp_path, values, aliases=("llama", "qwen")))
    deployments = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Deployment"}
    assert set(deployments) == {"platform-llama", "platform-qwen"}
    services = [
        m for m in manifests if m["kind"] == "Service" and m["metadata"]["name"].endswith("metrics")
    ]
    assert len(services) == 2
    for service in services:
        selected = [
            name
            for name, d in deployments.items()
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, (service["metadata"]["name"], selected)
    (monitor,) = [m for m in manifests if m["kind"] == "PodMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert [
        name
        for name, d in deployments.items()
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ] == ["platform-qwen"]


@pytest.mark.parametrize(
    "bad", [{"pagewarm": {"modes": "sidecar"}}, {"pagewarm": {"model": {"sizeBytes": "lots"}}}]
)
def test_the_subchart_still_refuses_bad_values(tmp_path: Path, bad: dict[str, Any]) -> None:
    """Accepting `global` did not open the rest of the schema."""
    root = umbrella(tmp_path, {"pagewarm": {"model": MODEL}})
    merged = yaml.safe_load((root / "values.yaml").read_text())
    merged["pagewarm"].update(bad["pagewarm"])
    (root / "values.yaml").write_text(yaml.safe_dump(merged))
    result = chart.run_helm("template", "platform", str(root), check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr
