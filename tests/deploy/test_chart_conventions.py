"""What production use of the chart needs beyond a pod that starts: a vLLM that can serve a
Hugging Face cache entry, rollouts that do not fail while a cold start is still allowed to
run, the node each pod runs on, and the knobs users of kube-prometheus-stack, node-exporter
and production-stack charts expect (disruption budgets, scheduler, envFrom, annotations,
history, a NetworkPolicy, registry mirrors, securityContext overrides)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter.weightset import model_name_for_path
from tests.deploy import chart

Manifest = dict[str, Any]
SIDECAR = [chart.values_file("sidecar")]
HF_ENTRY = "/hf/hub/models--meta-llama--Llama-3.1-8B-Instruct"
REVISION = "0e9e39f249a16976918f6564b8830bc894c89659"


def deployment(values: list[Path], overrides: dict[str, Any] | None = None) -> Manifest:
    found: Manifest = chart.render(values, overrides).one("Deployment")
    return found


def arg(container: Manifest, flag: str) -> str:
    args: list[str] = container["args"]
    return args[args.index(flag) + 1]


# Defect 3: a Hugging Face cache entry as model.path.


def hf_values(revision: str = "") -> dict[str, Any]:
    return {
        "model.path": HF_ENTRY,
        "model.name": "",
        "model.revision": revision,
        "model.volume.mountPath": "/hf",
    }


@pytest.mark.parametrize("revision", ["", REVISION], ids=["refs-main", "pinned"])
def test_a_hugging_face_cache_entry_gives_vllm_a_model_it_can_serve(revision: str) -> None:
    """The entry's own directory has no config.json: vLLM gets the repository id with the
    cache as HF_HUB_CACHE, offline (so Hugging Face's resolver picks the snapshot from
    refs/main, or the pinned revision), and serves it under the model's name, the same
    name pagewarm labels its metrics with. pagewarm warms the snapshot vLLM serves."""
    pod = chart.pod_spec(deployment(SIDECAR, hf_values(revision)))
    vllm, sidecar = chart.container(pod, "vllm"), chart.container(pod, "pagewarm")
    assert vllm["args"][0] == "meta-llama/Llama-3.1-8B-Instruct"
    assert arg(vllm, "--served-model-name") == "meta-llama/Llama-3.1-8B-Instruct"
    assert arg(sidecar, "--model-name") == "meta-llama/Llama-3.1-8B-Instruct"
    env = chart.env_values(vllm)
    assert env["HF_HUB_CACHE"] == "/hf/hub"
    assert env["HF_HUB_OFFLINE"] == "1"
    if revision:
        assert arg(vllm, "--revision") == revision
        assert sidecar["args"][1] == f"{HF_ENTRY}/snapshots/{revision}"
    else:
        assert "--revision" not in vllm["args"]
        assert sidecar["args"][1] == HF_ENTRY


def fake_hub(root: Path) -> dict[str, Path]:
    """A Hugging Face hub cache as huggingface_hub writes it: snapshots/<commit>/ holding
    symlinks into blobs/, refs/main naming the newest commit. Returns commit -> snapshot."""
    entry = root / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct"
    snapshots = {}
    for commit, text in ((REVISION, "old"), ("f" * 40, "new")):
        snapshot = entry / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            blob = entry / "blobs" / f"{commit}-{name}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_text(json.dumps({"revision": text}))
            (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
        snapshots[commit] = snapshot
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("f" * 40)
    return snapshots


@pytest.mark.parametrize("revision", ["", REVISION], ids=["refs-main", "pinned"])
def test_the_rendered_vllm_arguments_resolve_to_a_snapshot(revision: str, tmp_path: Path) -> None:
    """Hugging Face's own resolver (huggingface_hub, which vLLM loads weights and config
    through), given the rendered environment and arguments over a real cache layout, finds
    the snapshot with config.json: refs/main's, or the pinned one."""
    pytest.importorskip("huggingface_hub")
    snapshots = fake_hub(tmp_path)
    vllm = chart.container(chart.pod_spec(deployment(SIDECAR, hf_values(revision))), "vllm")
    env = {k: v.replace("/hf", str(tmp_path)) for k, v in chart.env_values(vllm).items()}
    pinned = arg(vllm, "--revision") if "--revision" in vllm["args"] else None
    script = (
        "import sys, huggingface_hub\n"
        "print(huggingface_hub.snapshot_download(sys.argv[1], revision=sys.argv[2] or None))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, vllm["args"][0], pinned or ""],
        env={**os.environ, "HF_HOME": str(tmp_path / "home"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved = Path(result.stdout.strip().splitlines()[-1])
    assert resolved == snapshots[revision or "f" * 40]
    assert (resolved / "config.json").is_file()


@pytest.mark.parametrize(
    "path",
    [
        "/models/Llama-3.1-8B-Instruct",
        "/models/Llama-3.1-8B-Instruct/",
        HF_ENTRY,
        f"{HF_ENTRY}/snapshots/{REVISION}",
        "/models/datasets--org--set",
    ],
)
def test_the_chart_names_a_model_as_pagewarm_does(path: str) -> None:
    """The name vLLM serves under is the `model` label of pagewarm's metrics: the chart's
    derivation is the exporter's own (exporter/weightset.py model_name_for_path)."""
    values = {"model.path": path, "model.name": "", "model.volume.mountPath": "/"}
    values["model.volume.mountPath"] = "/hf" if path.startswith("/hf") else "/models"
    vllm = chart.container(chart.pod_spec(deployment(SIDECAR, values)), "vllm")
    assert arg(vllm, "--served-model-name") == model_name_for_path(path)


def test_model_name_is_what_vllm_serves_and_pagewarm_labels() -> None:
    pod = chart.pod_spec(deployment(SIDECAR))  # ci: model.name meta-llama/Llama-3.1-8B-Instruct
    assert arg(chart.container(pod, "vllm"), "--served-model-name") == (
        "meta-llama/Llama-3.1-8B-Instruct"
    )
    assert arg(chart.container(pod, "pagewarm"), "--model-name") == (
        "meta-llama/Llama-3.1-8B-Instruct"
    )


# Defect 4: the rollout deadline follows the chart's budgets.


def budgets(values: list[Path], overrides: dict[str, Any] | None = None) -> tuple[int, int]:
    """(the rendered progressDeadlineSeconds, the budgets it must cover)."""
    rendered = deployment(values, overrides)
    pod = chart.pod_spec(rendered)
    vllm = chart.container(pod, "vllm")
    startup, ready = vllm["startupProbe"], vllm["readinessProbe"]
    covered = startup["periodSeconds"] * startup["failureThreshold"]
    covered += ready["periodSeconds"] * ready["failureThreshold"]
    warmer = chart.container(pod, "pagewarm")
    if "startupProbe" in warmer:
        probe = warmer["startupProbe"]
        covered += probe["periodSeconds"] * probe["failureThreshold"]
    return int(rendered["spec"]["progressDeadlineSeconds"]), covered


def test_the_rollout_deadline_covers_the_gate_and_vllms_start() -> None:
    """Kubernetes' default of 600 s marks a rollout failed while a 70B pod is still within
    its gate (1020 s) and vLLM startup (1800 s) budgets; the derived deadline covers both,
    plus 600 s for scheduling and pulling images."""
    deadline, covered = budgets(
        [],
        {"model.path": "/models/m", "model.sizeBytes": "140Gi", "model.volume.claimName": "models"},
    )
    assert covered == 1020 + 1800 + 30
    assert deadline == covered + 600
    # A longer vLLM budget moves it along.
    longer, covered = budgets(SIDECAR, {"vllm.startupProbe.failureThreshold": 360})
    assert longer == covered + 600 > deadline
    assert budgets(SIDECAR, {"vllm.progressDeadlineSeconds": 7200})[0] == 7200


def test_an_init_mode_rollout_allows_a_rate_limited_warm_of_the_whole_model() -> None:
    """An init container has no timeout: with a rate limit the warm of the whole model
    bounds it (ci/hf-cache: 132 GiB at 100 MiB/s)."""
    deadline, covered = budgets([chart.values_file("hf-cache")])
    warm = -(-132 * (1 << 30) // (100 << 20))
    assert deadline == 600 + warm + covered


# Defect 5: every pod knows its node; Prometheus labels every series with it.


@pytest.mark.parametrize("values", chart.WORKLOAD_VALUES, ids=lambda p: p.name)
def test_every_pagewarm_container_gets_its_node_name(values: Path) -> None:
    rendered = chart.render([values])
    for kind in ("Deployment", "DaemonSet"):
        for workload in rendered.of_kind(kind):
            for container in chart.containers(chart.pod_spec(workload)):
                if not container["name"].startswith("pagewarm"):
                    continue
                env = {e["name"]: e for e in container["env"]}
                assert env["PAGEWARM_NODE_NAME"]["valueFrom"] == {
                    "fieldRef": {"fieldPath": "spec.nodeName"}
                }
    if values.name == "sidecar-snippet-values.yaml":
        patch = chart.snippet_patch(rendered)
        (sidecar,) = chart.pod_spec(patch)["initContainers"]
        assert any(e["name"] == "PAGEWARM_NODE_NAME" for e in sidecar["env"])


@pytest.mark.parametrize(("setting", "value"), [(None, None), (True, "true"), (False, "false")])
def test_per_file_series_are_the_exporters_choice_unless_set(
    setting: bool | None, value: str | None
) -> None:
    for values, kind in (("node", "DaemonSet"), ("sidecar", "Deployment")):
        pod = chart.pod_spec(
            chart.render([chart.values_file(values)], {"pagewarm.perFileSeries": setting}).one(kind)
        )
        for container in chart.containers(pod):
            if container["name"].startswith("pagewarm"):
                assert chart.env_values(container).get("PAGEWARM_PER_FILE_SERIES") == value


# Workload conventions.


def test_disruption_budget_scheduler_env_from_annotations_and_history() -> None:
    rendered = chart.render(
        SIDECAR,
        {
            "vllm.podDisruptionBudget": {
                "enabled": True,
                "minAvailable": "50%",
                "maxUnavailable": None,
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
            "pod.schedulerName": "gpu-scheduler",
            "vllm.envFrom": [{"secretRef": {"name": "hf-token"}}],
            "vllm.deploymentAnnotations": {"argocd.argoproj.io/sync-wave": "2"},
            "revisionHistoryLimit": 3,
        },
    )
    workload = rendered.one("Deployment")
    budget = rendered.one("PodDisruptionBudget")
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] == "50%"
    assert "maxUnavailable" not in budget["spec"]
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod = chart.pod_spec(workload)
    assert pod["schedulerName"] == "gpu-scheduler"
    assert chart.container(pod, "vllm")["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert workload["metadata"]["annotations"] == {"argocd.argoproj.io/sync-wave": "2"}
    assert workload["spec"]["revisionHistoryLimit"] == 3
    assert "PodDisruptionBudget" not in {m["kind"] for m in chart.render(SIDECAR).manifests}
    daemonset = chart.render(
        [chart.values_file("node")],
        {"node.daemonSetAnnotations": {"a": "b"}, "revisionHistoryLimit": 4},
    ).one("DaemonSet")
    assert daemonset["metadata"]["annotations"] == {"a": "b"}
    assert daemonset["spec"]["revisionHistoryLimit"] == 4


def test_the_network_policy_opens_pagewarms_port_to_prometheus_only() -> None:
    rendered = chart.render([chart.values_file("monitoring-on")])
    policy = rendered.one("NetworkPolicy")
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    metrics, api = policy["spec"]["ingress"]
    assert metrics["ports"] == [{"port": 9741, "protocol": "TCP"}]
    assert metrics["from"] == chart.values_yaml()["networkPolicy"]["metricsFrom"]
    assert api["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert "from" not in api  # vLLM's API stays open unless vllmFrom says otherwise
    node = chart.render([chart.values_file("node")], {"networkPolicy.enabled": True})
    (only,) = node.one("NetworkPolicy")["spec"]["ingress"]
    assert only["ports"] == [{"port": 9741, "protocol": "TCP"}]


def test_images_come_from_a_mirror() -> None:
    pod = chart.pod_spec(deployment(SIDECAR, {"image.registry": "registry.example.com"}))
    assert chart.container(pod, "pagewarm")["image"] == (
        "registry.example.com/pagewarm/pagewarm:0.1.0"
    )
    assert chart.container(pod, "vllm")["image"] == "vllm/vllm-openai:v0.11.0"
    pod = chart.pod_spec(
        deployment(
            SIDECAR,
            {
                "global.imageRegistry": "mirror.example.com:5000",
                "global.imagePullSecrets": [{"name": "mirror"}],
                "imagePullSecrets": [{"name": "regcred"}],
            },
        )
    )
    assert chart.container(pod, "pagewarm")["image"] == (
        "mirror.example.com:5000/pagewarm/pagewarm:0.1.0"
    )
    assert chart.container(pod, "vllm")["image"] == (
        "mirror.example.com:5000/vllm/vllm-openai:v0.11.0"
    )
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


def test_the_security_context_can_be_adapted() -> None:
    """OpenShift's restricted SCC assigns the UID: runAsUser and runAsGroup can be null.
    Other fields merge over the hardened defaults."""
    pod = chart.pod_spec(
        deployment(
            SIDECAR,
            {
                "pagewarm.runAsUser": None,
                "pagewarm.runAsGroup": None,
                "pagewarm.securityContext": {"seLinuxOptions": {"type": "spc_t"}},
            },
        )
    )
    security = chart.container(pod, "pagewarm")["securityContext"]
    assert "runAsUser" not in security
    assert "runAsGroup" not in security
    assert security["runAsNonRoot"] is True
    assert security["seLinuxOptions"] == {"type": "spc_t"}
    assert security["readOnlyRootFilesystem"] is True
    # Maps merge key by key, lists are replaced: a capability list is the user's.
    added = {"capabilities": {"add": ["FOWNER", "SYS_PTRACE"]}}
    override = chart.pod_spec(deployment(SIDECAR, {"pagewarm.securityContext": added}))
    assert chart.container(override, "pagewarm")["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["FOWNER", "SYS_PTRACE"],
    }
