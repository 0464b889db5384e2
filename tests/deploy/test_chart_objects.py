"""What the rendered objects say: the native sidecar gates vLLM, the security context is
the hardened one, volumes are read-only where they must be, labels and selectors match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy import chart

Manifest = dict[str, Any]
PAGEWARM_CONTAINERS = {"pagewarm", "pagewarm-exporter"}
RECOMMENDED_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
}


def workload_pod(rendered: chart.Rendered) -> Manifest:
    """The pod spec of the Deployment or the DaemonSet, or the snippet's partial one."""
    for kind in ("Deployment", "DaemonSet"):
        if rendered.of_kind(kind):
            return chart.pod_spec(rendered.one(kind))
    return chart.pod_spec(chart.snippet_patch(rendered))


def pagewarm_containers(pod: Manifest) -> list[Manifest]:
    return [c for c in chart.containers(pod) if c["name"] in PAGEWARM_CONTAINERS]


def test_sidecar_is_a_native_sidecar_that_gates_vllm() -> None:
    values = chart.values_yaml()
    pod = chart.pod_spec(chart.render([chart.values_file("sidecar")]).one("Deployment"))
    sidecar = pod["initContainers"][-1]
    assert sidecar["name"] == "pagewarm"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"][:2] == ["sidecar", "/models/Llama-3.1-8B-Instruct"]
    gate = sidecar["args"][sidecar["args"].index("--gate") + 1]
    assert gate == "full"
    # The kubelet starts vLLM only after this probe passed: it must probe the gate.
    probe = sidecar["startupProbe"]
    assert probe["httpGet"] == {"path": "/startup", "port": "metrics"}
    metrics_port = next(p for p in sidecar["ports"] if p["name"] == "metrics")
    assert metrics_port["containerPort"] == values["pagewarm"]["port"]
    # The probe outlasts the sidecar's own gate timeout (which opens the gate anyway):
    # a slow disk delays the start, it never restarts the warm in a loop.
    timeout = int(sidecar["args"][sidecar["args"].index("--gate-timeout") + 1])
    grace = values["sidecar"]["startupProbe"]["graceSeconds"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    assert timeout + grace <= budget < timeout + grace + probe["periodSeconds"]
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "readinessProbe" not in sidecar  # a sidecar's readiness would gate the pod's
    # vLLM: a regular container, probed on /health, with room for a cold 70B load.
    (vllm,) = pod["containers"]
    assert vllm["name"] == "vllm"
    assert "restartPolicy" not in vllm
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[kind]["httpGet"] == {"path": "/health", "port": "http"}
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    assert vllm["args"][0] == "/models/Llama-3.1-8B-Instruct"
    health_url = sidecar["args"][sidecar["args"].index("--vllm-url") + 1]
    vllm_port = next(p["containerPort"] for p in vllm["ports"] if p["name"] == "http")
    assert health_url == f"http://127.0.0.1:{vllm_port}/health"
    assert pod["shareProcessNamespace"] is True


def test_the_vllm_log_reaches_the_sidecar() -> None:
    """vLLM logs through the generated logging config into a file on a volume that the
    sidecar reads: same path on both sides."""
    rendered = chart.render([chart.values_file("sidecar")])
    pod = chart.pod_spec(rendered.one("Deployment"))
    sidecar, vllm = chart.container(pod, "pagewarm"), chart.container(pod, "vllm")
    log_path = sidecar["args"][sidecar["args"].index("--vllm-log") + 1]
    env = chart.env_values(vllm)
    config_path = Path(env["VLLM_LOGGING_CONFIG_PATH"])
    mount = next(m for m in vllm["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = next(
        m
        for m in rendered.of_kind("ConfigMap")
        if m["metadata"]["name"] == volume["configMap"]["name"]
    )
    import json  # noqa: PLC0415

    config = json.loads(config_map["data"][config_path.name])
    assert config["handlers"]["file"]["filename"] == log_path
    assert "file" in config["loggers"]["vllm"]["handlers"]
    log_dir = str(Path(log_path).parent)
    vllm_mount = next(m for m in vllm["volumeMounts"] if m["mountPath"] == log_dir)
    sidecar_mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == log_dir)
    assert vllm_mount["name"] == sidecar_mount["name"]
    assert sidecar_mount["readOnly"] is True
    assert env["VLLM_CONFIGURE_LOGGING"] == "1"


def test_init_mode_warms_before_vllm_and_exports_beside_it() -> None:
    pod = chart.pod_spec(chart.render([chart.values_file("init")]).one("Deployment"))
    exporter, init = pod["initContainers"]
    assert exporter["name"] == "pagewarm-exporter"
    assert exporter["restartPolicy"] == "Always"
    assert exporter["args"][:3] == ["exporter", "--model-path", "/models/mistral-7b"]
    assert init["name"] == "pagewarm"
    assert "restartPolicy" not in init  # a classic init container: runs to completion
    assert init["args"][:2] == ["init", "/models/mistral-7b"]
    assert "startupProbe" not in init
    assert [c["name"] for c in pod["containers"]] == ["vllm"]
    args = init["args"]
    assert args[args.index("--strategy") + 1] == "populate"
    assert args[args.index("--rate-limit") + 1] == "1073741824"


def test_node_mode_keeps_the_model_cache_warm_read_only() -> None:
    rendered = chart.render([chart.values_file("node")])
    daemonset = rendered.one("DaemonSet")
    pod = chart.pod_spec(daemonset)
    (exporter,) = pod["containers"]
    assert exporter["args"][:3] == ["node", "--models-dir", "/models"]
    (models,) = [v for v in pod["volumes"] if "hostPath" in v]
    assert models["hostPath"] == {"path": "/mnt/nvme/models", "type": "Directory"}
    mount = next(m for m in exporter["volumeMounts"] if m["name"] == models["name"])
    assert mount["readOnly"] is True
    assert mount["mountPropagation"] == "HostToContainer"
    assert exporter["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "initContainers" not in pod


# node-nfd writes NFD's root-owned features.d: root, with CAP_FOWNER as its only capability
# (test_chart_node.py checks that pod).
NON_ROOT_VALUES = [p for p in chart.WORKLOAD_VALUES if p.name != "node-nfd-values.yaml"]


@pytest.mark.parametrize("values", NON_ROOT_VALUES, ids=lambda p: p.name)
def test_pagewarm_containers_are_hardened(values: Path) -> None:
    rendered = chart.render([values])
    pod = workload_pod(rendered)
    containers = pagewarm_containers(pod)
    assert containers
    for container in containers:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 65532
        assert security["runAsGroup"] == 65532
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["privileged"] is False
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert security["capabilities"] == {"drop": ["ALL"], "add": ["FOWNER"]}
        # The model is read-only for pagewarm, whatever the volume.
        model_mounts = [m for m in container["volumeMounts"] if m["name"] != "pagewarm-state"]
        assert model_mounts
        assert all(m["readOnly"] is True for m in model_mounts)
        # State is written to the one volume meant for it, never to the root filesystem.
        env = chart.env_values(container)
        state = next(m for m in container["volumeMounts"] if m["name"] == "pagewarm-state")
        assert env["PAGEWARM_SAMPLES"].startswith(state["mountPath"] + "/")
        assert env["PYTHONDONTWRITEBYTECODE"] == "1"
        assert "image" in container
        assert not container["image"].endswith(":latest")


def test_mlock_adds_ipc_lock_and_fowner_can_be_turned_off() -> None:
    base = [chart.values_file("sidecar")]
    pod = chart.pod_spec(chart.render(base, {"sidecar.mlock": True}).one("Deployment"))
    sidecar = chart.container(pod, "pagewarm")
    assert sidecar["securityContext"]["capabilities"]["add"] == ["FOWNER", "IPC_LOCK"]
    assert "--mlock" in sidecar["args"]
    pod = chart.pod_spec(chart.render(base, {"pagewarm.fowner": False}).one("Deployment"))
    capabilities = chart.container(pod, "pagewarm")["securityContext"]["capabilities"]
    assert capabilities == {"drop": ["ALL"]}
    # Root with CAP_FOWNER as its only capability (README "Truthful residency").
    rendered = chart.render(base, {"pagewarm.runAsUser": 0, "pagewarm.runAsNonRoot": False})
    security = chart.container(chart.pod_spec(rendered.one("Deployment")), "pagewarm")[
        "securityContext"
    ]
    assert security["runAsUser"] == 0
    assert security["runAsNonRoot"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["FOWNER"]}


@pytest.mark.parametrize("values", chart.CI_VALUES, ids=lambda p: p.name)
def test_recommended_labels_everywhere(values: Path) -> None:
    for manifest in chart.render([values]).manifests:
        labels = manifest["metadata"]["labels"]
        assert set(labels) >= RECOMMENDED_LABELS, manifest["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == chart.RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if "template" in manifest.get("spec", {}):
            pod_labels = manifest["spec"]["template"]["metadata"]["labels"]
            selector = manifest["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pod_labels.items()
            assert pod_labels["pagewarm.io/instance"] == "pw-pagewarm"


def test_service_monitor_selects_the_metrics_service_and_carries_labels() -> None:
    rendered = chart.render([chart.values_file("monitoring-on")])
    assert rendered.of_kind("Deployment")
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selected = [
        s
        for s in rendered.of_kind("Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["pw-pagewarm-metrics"]
    (service,) = selected
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    # The Service reaches the sidecar's metrics port on the pods it selects.
    deployment = rendered.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    sidecar = chart.container(chart.pod_spec(deployment), "pagewarm")
    assert port["targetPort"] in [p["containerPort"] for p in sidecar["ports"]]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [chart.NAMESPACE]}


def test_pod_monitor_scrapes_the_named_port() -> None:
    rendered = chart.render([chart.values_file("node")])
    monitor = rendered.one("PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    daemonset = rendered.one("DaemonSet")
    ports = [p["name"] for c in chart.containers(chart.pod_spec(daemonset)) for p in c["ports"]]
    assert endpoint["port"] in ports
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_scrape_jobs_match_the_exporter_down_alert() -> None:
    """PagewarmExporterDown selects up{job=~".*pagewarm.*"}; the monitors name the job
    "pagewarm" (jobLabel), and without a jobLabel Prometheus names it after the Service
    (ServiceMonitor) or the PodMonitor: their names keep "pagewarm" even when the release
    is named otherwise."""
    overrides = {"fullnameOverride": "llama", "monitoring.podMonitor.enabled": True}
    rendered = chart.render([chart.values_file("monitoring-on")], overrides)
    assert rendered.one("Deployment")["metadata"]["name"] == "llama"
    for kind in ("ServiceMonitor", "PodMonitor"):
        assert "pagewarm" in rendered.one(kind)["metadata"]["name"]
    metrics = [s for s in rendered.of_kind("Service") if "metrics" in s["metadata"]["name"]]
    assert [s["metadata"]["name"] for s in metrics] == ["llama-pagewarm-metrics"]


def test_images_are_pinned() -> None:
    for values in chart.WORKLOAD_VALUES:
        pod = workload_pod(chart.render([values]))
        for container in chart.containers(pod):
            if "image" in container:
                name, _, tag = container["image"].rpartition(":")
                assert name and tag and tag != "latest", container["image"]
    rendered = chart.render([chart.values_file("sidecar")], {"image.digest": "sha256:" + "a" * 64})
    sidecar = chart.container(chart.pod_spec(rendered.one("Deployment")), "pagewarm")
    assert sidecar["image"] == "ghcr.io/pagewarm/pagewarm:0.1.0@sha256:" + "a" * 64


def test_snippet_carries_the_same_sidecar_as_the_deployment() -> None:
    """The patch for a user's own manifest and the chart's Deployment render pagewarm's
    containers from the same template: identical for the same values."""
    snippet_values = [chart.values_file("sidecar-snippet")]
    patch = chart.snippet_patch(chart.render(snippet_values))
    as_deployment = chart.render(
        snippet_values,
        {
            "vllm.enabled": True,
            "model.volume.type": "persistentVolumeClaim",
            "model.volume.claimName": "models",
        },
    )
    deployed = chart.pod_spec(as_deployment.one("Deployment"))["initContainers"]
    assert chart.pod_spec(patch)["initContainers"] == deployed
    # The volume the user's pod already has is not added twice.
    volumes = [v["name"] for v in chart.pod_spec(patch)["volumes"]]
    assert volumes == ["pagewarm-state"]
