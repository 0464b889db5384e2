"""The chart lints, renders for every values file under ci/, and every object it renders is
valid: built-in kinds against Kubernetes' own schemas (kubernetes-validate, offline),
Prometheus Operator kinds against their CRDs' structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy import chart, crds

# What each values file must render, and nothing else: kind/name.
EXPECTED_OBJECTS = {
    "sidecar": [
        "ConfigMap/pw-pagewarm-vllm-logging",
        "Deployment/pw-pagewarm",
        "Service/pw-pagewarm",
        "Service/pw-pagewarm-metrics",
        "ServiceAccount/pw-pagewarm",
    ],
    "sidecar-snippet": [
        "ConfigMap/pw-pagewarm-snippet",
        "Service/pw-pagewarm-metrics",
        "ServiceAccount/pw-pagewarm",
    ],
    "init": [
        "Deployment/pw-pagewarm",
        "Service/pw-pagewarm",
        "Service/pw-pagewarm-metrics",
        "ServiceAccount/pw-pagewarm",
    ],
    "node": [
        "DaemonSet/pw-pagewarm",
        "PodMonitor/pw-pagewarm-metrics",
        "ServiceAccount/pw-pagewarm",
    ],
    "monitoring-on": [
        "Deployment/pw-pagewarm",
        "PrometheusRule/pw-pagewarm",
        "Service/pw-pagewarm",
        "Service/pw-pagewarm-metrics",
        "ServiceAccount/pw-pagewarm",
        "ServiceMonitor/pw-pagewarm-metrics",
    ],
    "monitoring-off": ["Deployment/pw-pagewarm"],
}
CRD_KINDS = set(crds.SCHEMAS)


def ci_name(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


def dashboards() -> list[str]:
    """ConfigMaps the monitoring-on values add: one per dashboard of the repository."""
    return [
        f"ConfigMap/pw-pagewarm-dashboard-{p.stem.lower().replace('_', '-').replace('.', '-')}"
        for p in sorted(chart.DASHBOARDS_DIR.glob("*.json"))
    ]


def test_every_ci_values_file_is_covered() -> None:
    assert {ci_name(p) for p in chart.CI_VALUES} == set(EXPECTED_OBJECTS)


@pytest.mark.parametrize("values", [None, *chart.CI_VALUES], ids=lambda p: p and ci_name(p))
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(chart.CHART)]
    if values:
        args += ["--values", str(values)]
    result = chart.run_helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", chart.CI_VALUES, ids=ci_name)
def test_renders_the_expected_objects(values: Path) -> None:
    rendered = chart.render([values])
    expected = EXPECTED_OBJECTS[ci_name(values)]
    if ci_name(values) == "monitoring-on":
        expected = sorted(expected + dashboards())
    assert rendered.kinds() == sorted(expected)


@pytest.mark.parametrize("values", chart.CI_VALUES, ids=ci_name)
def test_every_object_is_valid_against_the_kubernetes_schemas(values: Path) -> None:
    for manifest in chart.render([values]).manifests:
        if manifest["kind"] in CRD_KINDS:
            crds.validate(manifest)
            continue
        try:
            kubernetes_validate.validate(manifest, chart.KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} {path}: {error}")


@pytest.mark.parametrize(
    ("overrides", "init_containers", "volumes"),
    [
        ({}, ["pagewarm"], {"model-cache", "pagewarm-state"}),
        ({"mode": "init"}, ["pagewarm-exporter", "pagewarm"], {"model-cache", "pagewarm-state"}),
        (
            {"sidecar.vllmLog.enabled": True},
            ["pagewarm"],
            {"model-cache", "pagewarm-state", "pagewarm-vllm-log", "pagewarm-vllm-logging"},
        ),
    ],
    ids=["sidecar", "init", "vllm-log"],
)
def test_the_snippet_patch_makes_a_valid_deployment(
    overrides: dict[str, Any], init_containers: list[str], volumes: set[str]
) -> None:
    """A user's own vLLM Deployment, with the snippet applied the way a strategic merge
    does it (lists merged by their merge key, maps merged), is still a valid Deployment."""
    rendered = chart.render([chart.values_file("sidecar-snippet")], overrides)
    patch = chart.snippet_patch(rendered)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "my-vllm"},
        "spec": {
            "selector": {"matchLabels": {"app": "my-vllm"}},
            "template": {
                "metadata": {"labels": {"app": "my-vllm"}},
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.11.0",
                            "volumeMounts": [{"name": "model-cache", "mountPath": "/data/models"}],
                        }
                    ],
                    "volumes": [
                        {"name": "model-cache", "persistentVolumeClaim": {"claimName": "m"}}
                    ],
                },
            },
        },
    }
    merged = strategic_merge(deployment, patch)
    kubernetes_validate.validate(merged, chart.KUBERNETES_VERSION, strict=True)
    spec = merged["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == init_containers
    assert {v["name"] for v in spec["volumes"]} == volumes
    labels = merged["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == chart.RELEASE
    (vllm,) = spec["containers"]
    assert vllm["image"] == "vllm/vllm-openai:v0.11.0"  # the user's container, kept
    if "pagewarm-vllm-log" in volumes:
        assert {e["name"] for e in vllm["env"]} == {
            "VLLM_CONFIGURE_LOGGING",
            "VLLM_LOGGING_CONFIG_PATH",
        }


def strategic_merge(original: Any, patch: Any) -> Any:
    """Maps merge key by key; lists merge by their merge key as Kubernetes' strategic merge
    does (mountPath for volumeMounts, name for containers, volumes and env); other values
    are replaced."""
    if isinstance(original, dict) and isinstance(patch, dict):
        merged = dict(original)
        for key, value in patch.items():
            merged[key] = strategic_merge(original[key], value) if key in original else value
        return merged
    if isinstance(original, list) and isinstance(patch, list):
        items = original + patch
        for key in ("mountPath", "name"):
            if items and all(isinstance(i, dict) and key in i for i in items):
                patched = {p[key]: p for p in patch}
                result = [strategic_merge(i, patched.get(i[key], i)) for i in original]
                known = {i[key] for i in original}
                return result + [p for p in patch if p[key] not in known]
    return patch


def test_the_chart_packages_with_its_rules_and_dashboards(tmp_path: Path) -> None:
    """helm package follows the symlinks files/alerts and files/grafana and inlines the
    repository's files; the packaged chart renders the same rules."""
    result = chart.run_helm("package", str(chart.CHART), "--destination", str(tmp_path))
    assert result.returncode == 0
    (package,) = tmp_path.glob("pagewarm-*.tgz")
    listing = chart.run_helm("show", "chart", str(package)).stdout
    assert "name: pagewarm" in listing
    import tarfile  # noqa: PLC0415 - only this test reads archives

    with tarfile.open(package) as archive:
        names = set(archive.getnames())
        rules = archive.extractfile("pagewarm/files/alerts/pagewarm.rules.yml")
        assert rules is not None
        assert rules.read().decode() == chart.RULES_FILE.read_text()
    # Only the dashboards and the rules travel, not their generators or promtool tests.
    shipped = {n for n in names if n.startswith("pagewarm/files/")}
    assert shipped == {"pagewarm/files/alerts/pagewarm.rules.yml"} | {
        f"pagewarm/files/grafana/{d.name}" for d in chart.DASHBOARDS_DIR.glob("*.json")
    }
