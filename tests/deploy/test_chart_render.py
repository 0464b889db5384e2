"""The chart lints, renders for every values file under ci/, and every object it renders is
valid: built-in kinds against Kubernetes' own schemas (kubernetes-validate, offline),
Prometheus Operator kinds against their CRDs' structure."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy import chart, crds
from tests.support import require_binary

Manifest = dict[str, Any]

# What each values file must render, and nothing else: kind/name.
EXPECTED_OBJECTS = {
    "hf-cache": [
        "Deployment/pw-pagewarm",
        "Service/pw-pagewarm",
        "Service/pw-pagewarm-metrics",
        "ServiceAccount/pw-pagewarm",
    ],
    "monitoring": ["PrometheusRule/pw-pagewarm"],
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
    "node-nfd": [
        "ConfigMap/pw-pagewarm-node",
        "DaemonSet/pw-pagewarm",
        "PodMonitor/pw-pagewarm-metrics",
        "ServiceAccount/pw-pagewarm",
    ],
    "monitoring-on": [
        "Deployment/pw-pagewarm",
        "NetworkPolicy/pw-pagewarm",
        "PodDisruptionBudget/pw-pagewarm",
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
    """ConfigMaps the monitoring values add: one per dashboard of the repository."""
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
    if ci_name(values) == "monitoring":
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


# Host Deployments the snippet patches, written here as their charts document them (no file
# of theirs is copied). vLLM production-stack's engine Deployment
# (helm/templates/deployment-vllm-multi.yaml): named <release>-<model>-deployment-vllm,
# selecting its pods on `model` and `helm-release-name` plus servingEngineSpec.labels
# (default environment: test, release: test); the container is "vllm", an optional init
# container (modelSpec.initContainer, "init" in its example) runs first, and the model's PVC
# "<release>-storage" is mounted at /data, the Hugging Face cache (HF_HOME=/data).
PRODUCTION_STACK_LABELS = {
    "model": "mistral",
    "helm-release-name": "vllm",
    "environment": "test",
    "release": "test",
}
# A `helm create`-style chart selects its pods on the app.kubernetes.io labels.
HELM_CREATE_LABELS = {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": "llama"}


def host_deployment(name: str, labels: dict[str, str], volume: str, mount: str) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "initContainers": [
                        {
                            "name": "init",
                            "image": "busybox:1.36",
                            "command": ["sh", "-c", "ls /data"],
                            "volumeMounts": [{"name": volume, "mountPath": mount}],
                        }
                    ],
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.11.0",
                            "command": ["vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.2"],
                            "env": [{"name": "HF_HOME", "value": mount}],
                            "ports": [{"name": "container-port", "containerPort": 8000}],
                            "volumeMounts": [{"name": volume, "mountPath": mount}],
                        }
                    ],
                    "volumes": [{"name": volume, "persistentVolumeClaim": {"claimName": volume}}],
                },
            },
        },
    }


HOSTS = {
    "production-stack": (
        host_deployment(
            "vllm-mistral-deployment-vllm", PRODUCTION_STACK_LABELS, "vllm-storage", "/data"
        ),
        {
            "model.path": "/data/hub/models--mistralai--Mistral-7B-Instruct-v0.2",
            "model.volume.name": "vllm-storage",
            "model.volume.mountPath": "/data",
            "sidecar.loadTimeoutSeconds": 600,
            "snippet.initContainersBefore": ["init"],
        },
    ),
    "helm-create": (
        host_deployment("llama-vllm", HELM_CREATE_LABELS, "model-cache", "/data/models"),
        {"snippet.initContainersBefore": ["init"], "model.volume.name": "model-cache"},
    ),
}


def kubectl_strategic_merge(original: Manifest, patch: str, tmp_path: Path) -> Manifest:
    """What `kubectl patch --patch-file` does to the Deployment, done offline by kubectl
    itself (its built-in schema of apps/v1: merge keys, $setElementOrder)."""
    kubectl = require_binary("kubectl")
    target = tmp_path / "deployment.json"
    target.write_text(json.dumps(original))
    patch_file = tmp_path / "patch.yaml"
    patch_file.write_text(patch)
    argv = [kubectl, "patch", "--local", "--type", "strategic", "-f", str(target)]
    result = subprocess.run(
        [*argv, "--patch-file", str(patch_file), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    merged: Manifest = json.loads(result.stdout)
    return merged


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize(
    ("overrides", "init_containers", "volumes"),
    [
        ({}, ["init", "pagewarm"], {"pagewarm-state"}),
        ({"mode": "init"}, ["init", "pagewarm-exporter", "pagewarm"], {"pagewarm-state"}),
        (
            {"sidecar.vllmLog.enabled": True},
            ["init", "pagewarm"],
            {"pagewarm-state", "pagewarm-vllm-log", "pagewarm-vllm-logging"},
        ),
    ],
    ids=["sidecar", "init", "vllm-log"],
)
def test_the_snippet_patch_keeps_the_host_deployment_valid_and_selected(
    host: str,
    overrides: dict[str, Any],
    init_containers: list[str],
    volumes: set[str],
    tmp_path: Path,
) -> None:
    """A host chart's vLLM Deployment, patched with the snippet by a real strategic merge
    (kubectl), still selects its own pods (pagewarm adds labels of its own and changes none
    of the host's), is a valid Deployment, runs pagewarm after the host's init container,
    and is what pagewarm's metrics Service and NetworkPolicy select."""
    deployment, host_values = HOSTS[host]
    values = {**host_values, "networkPolicy.enabled": True, **overrides}
    rendered = chart.render([chart.values_file("sidecar-snippet")], values)
    config_map = next(
        m for m in rendered.of_kind("ConfigMap") if m["metadata"]["name"].endswith("-snippet")
    )
    merged = kubectl_strategic_merge(deployment, config_map["data"]["patch.yaml"], tmp_path)
    kubernetes_validate.validate(merged, chart.KUBERNETES_VERSION, strict=True)
    labels = merged["spec"]["template"]["metadata"]["labels"]
    selector = merged["spec"]["selector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), "the patched pods no longer match the selector"
    host_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if not k.startswith("pagewarm.io/")} == host_labels
    spec = merged["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == init_containers
    assert {v["name"] for v in spec["volumes"]} - {host_values["model.volume.name"]} == volumes
    (vllm,) = spec["containers"]
    assert vllm["image"] == "vllm/vllm-openai:v0.11.0"  # the host's container, kept
    if "pagewarm-vllm-log" in volumes:
        assert {e["name"] for e in vllm["env"]} == {
            "HF_HOME",
            "VLLM_CONFIGURE_LOGGING",
            "VLLM_LOGGING_CONFIG_PATH",
        }
    service = next(
        s for s in rendered.of_kind("Service") if s["metadata"]["name"].endswith("-metrics")
    )
    assert service["spec"]["selector"].items() <= labels.items()
    policy = rendered.one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


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
