"""Node mode runs the node agent (issue 14) as NODE_CONTRACT.md says: its command line, the
model list as a ConfigMap it re-reads, the models read-only at their host paths, NFD's
features.d as the one host directory it writes (opt-in), a memory limit that holds the
declared set, and the node on every series. The vLLM Deployment prefers, never requires,
the nodes where its model is warm, on the label the agent has NFD set."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from typing import Any

import pytest
import yaml

from tests.deploy import chart

NODE = [chart.values_file("node")]
NFD = [chart.values_file("node-nfd")]
SIDECAR = [chart.values_file("sidecar")]
MiB = 1 << 20
GiB = 1 << 30
FEATURES_DIR = "/etc/kubernetes/node-feature-discovery/features.d"
WARM_AFFINITY = "preferredDuringSchedulingIgnoredDuringExecution"


def agent(rendered: chart.Rendered) -> dict[str, Any]:
    (container,) = chart.pod_spec(rendered.one("DaemonSet"))["containers"]
    return container


def flag(container: dict[str, Any], name: str) -> str:
    args: list[str] = container["args"]
    return args[args.index(name) + 1]


def host_mounts(rendered: chart.Rendered) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each hostPath volume of the DaemonSet with the agent's mount of it, by host path."""
    pod = chart.pod_spec(rendered.one("DaemonSet"))
    mounts = {m["name"]: m for m in agent(rendered)["volumeMounts"]}
    return {
        v["hostPath"]["path"]: (v["hostPath"], mounts[v["name"]])
        for v in pod["volumes"]
        if "hostPath" in v
    }


def default_memory(*sizes: int) -> int:
    values = chart.values_yaml()
    reserve = chart.quantity_bytes(values["node"]["reserve"])
    total = sum(sizes) + reserve + values["memory"]["headroomBytes"]
    return -(-total // MiB) * MiB


def refusal(values: list[Any], overrides: dict[str, Any]) -> str:
    with pytest.raises(chart.RenderError) as raised:
        chart.render(values, overrides)
    return str(raised.value)


def test_the_agent_runs_with_the_model_list_it_re_reads() -> None:
    rendered = chart.render(NFD)
    container = agent(rendered)
    assert container["args"] == [
        "node",
        "--config",
        "/etc/pagewarm/models.yaml",
        "--node-name",
        "$(PAGEWARM_NODE_NAME)",
        "--port",
        "9741",
        "--interval",
        "30s",
        "--reserve",
        str(256 * MiB),
        "--warm-threshold",
        "0.95",
        "--rate-limit",
        str(500 * MiB),
        "--nfd-features-dir",
        FEATURES_DIR,
    ]
    config_map = rendered.one("ConfigMap")
    assert config_map["metadata"]["name"] == "pw-pagewarm-node"
    # Only the keys the agent's config reads: sizeBytes is the chart's, for the limit.
    assert yaml.safe_load(config_map["data"]["models.yaml"]) == {
        "models": [
            {"name": "llama-3-8b", "path": "/mnt/nvme/models/llama-3-8b", "priority": 100},
            {
                "name": "Qwen/Qwen2.5-7B-Instruct",
                "path": "/mnt/nvme/models/qwen2.5-7b",
                "priority": 0,
            },
        ]
    }
    # The whole directory, never a subPath (the kubelet does not update subPath mounts):
    # a new list reaches the agent without a restart, so no checksum rolls the pods.
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "pagewarm-node-config"]
    assert mount == {"name": "pagewarm-node-config", "mountPath": "/etc/pagewarm", "readOnly": True}
    annotations = rendered.one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert not [key for key in annotations if key.startswith("checksum/")]


def test_models_are_read_only_at_their_host_paths_and_nfd_is_the_one_writable_dir() -> None:
    mounts = host_mounts(chart.render(NFD))
    assert set(mounts) == {
        "/mnt/nvme/models/llama-3-8b",
        "/mnt/nvme/models/qwen2.5-7b",
        FEATURES_DIR,
    }
    for path, (host_path, mount) in mounts.items():
        assert mount["mountPath"] == path
        if path == FEATURES_DIR:
            assert host_path["type"] == "DirectoryOrCreate"
            assert "readOnly" not in mount
        else:
            assert host_path["type"] == "Directory"  # nothing is created for a model
            assert mount["readOnly"] is True


def test_node_mode_changes_nothing_on_the_host_by_default() -> None:
    rendered = chart.render(NODE)
    container = agent(rendered)
    assert "--nfd-features-dir" not in container["args"]
    assert flag(container, "--models-dir") == "/models"
    assert "--config" not in container["args"]
    assert "--rate-limit" not in container["args"]  # unlimited unless set
    mounts = host_mounts(rendered)
    assert set(mounts) == {"/mnt/nvme/models"}
    assert all(mount["readOnly"] is True for _, mount in mounts.values())
    assert all(host["type"] == "Directory" for host, _ in mounts.values())
    assert not rendered.of_kind("ConfigMap")
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["FOWNER"]}


def test_the_nfd_writer_is_root_with_fowner_only() -> None:
    """features.d is root's: the agent writes there as its owner, with no capability that
    overrides file permissions (no DAC_OVERRIDE), on a read-only root filesystem."""
    security = agent(chart.render(NFD))["securityContext"]
    assert security["runAsUser"] == 0
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["FOWNER"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False


def test_the_memory_limit_holds_the_declared_set() -> None:
    limits = agent(chart.render(NFD))["resources"]["limits"]
    assert chart.quantity_bytes(limits["memory"]) == default_memory(16 * GiB, 15 * GiB)
    limits = agent(chart.render(NODE))["resources"]["limits"]
    assert chart.quantity_bytes(limits["memory"]) == default_memory(64 * GiB)
    # Sizes as bytes or quantities, reserve as a quantity.
    overrides = {
        "node.models": [{"name": "a", "path": "/m/a", "sizeBytes": 1073741824}],
        "node.reserve": "1Gi",
    }
    limits = agent(chart.render(NODE, overrides))["resources"]["limits"]
    headroom = chart.values_yaml()["memory"]["headroomBytes"]
    assert chart.quantity_bytes(limits["memory"]) == 2 * GiB + headroom


def test_a_memory_limit_that_cannot_hold_the_set_is_refused_unless_partial_is_allowed() -> None:
    small = {"node.resources": {"limits": {"memory": "16Gi"}}}
    message = refusal(NFD, small)
    assert "node.resources.limits.memory 16Gi cannot hold the models" in message
    assert str(31 * GiB + 256 * MiB + chart.values_yaml()["memory"]["headroomBytes"]) in message
    partial = chart.render(NFD, {**small, "memory.allowPartialPrewarm": True})
    assert agent(partial)["resources"]["limits"]["memory"] == "16Gi"
    enough = chart.render(NFD, {"node.resources": {"limits": {"memory": "40Gi"}}})
    assert agent(enough)["resources"]["limits"]["memory"] == "40Gi"


def test_every_series_carries_the_node() -> None:
    rendered = chart.render(NFD)
    container = agent(rendered)
    (node_env,) = [e for e in container["env"] if e["name"] == "PAGEWARM_NODE_NAME"]
    assert node_env["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert flag(container, "--node-name") == "$(PAGEWARM_NODE_NAME)"
    (endpoint,) = rendered.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "node",
    } in endpoint["relabelings"]


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"node.models": [{"name": "a", "path": "/m/a"}]}, "sizeBytes"),
        ({"node.models": [{"name": "a", "path": "m/a", "sizeBytes": 1}]}, "/node/models/0/path"),
        ({"node.models": [{"name": "a", "path": "/m", "sizeBytes": "16GB"}]}, "sizeBytes"),
        (
            {"node.models": [{"name": "a", "path": "/m", "sizeBytes": 1, "priority": "high"}]},
            "priority",
        ),
        ({"node.models": [{"name": "a", "path": "/m", "sizeBytes": 1, "prio": 1}]}, "prio"),
        ({"node.models": [{"name": "///", "path": "/m", "sizeBytes": 1}]}, "/node/models/0/name"),
        ({"node.interval": "30 seconds"}, "/node/interval"),
        ({"node.interval": 0}, "/node/interval"),
        ({"node.rateLimit": "fast"}, "/node/rateLimit"),
        ({"node.reserve": "-1Gi"}, "/node/reserve"),
        ({"node.warmThreshold": 1.5}, "/node/warmThreshold"),
        ({"node.warmThreshold": 0}, "/node/warmThreshold"),
        ({"node.nfd.featuresDir": "features.d"}, "/node/nfd/featuresDir"),
        ({"node.nfd.enable": True}, "enable"),
        ({"placement.labelPrefix": "pagewarm.io"}, "/placement/labelPrefix"),
        ({"placement.weight": 0}, "/placement/weight"),
        ({"placement.preferWarmNodes": "yes"}, "/placement/preferWarmNodes"),
        ({"monitoring.prometheusRule.modelReplicas": {"a": 0}}, "modelReplicas"),
    ],
)
def test_schema_refuses(overrides: dict[str, Any], where: str) -> None:
    message = refusal(NODE, overrides)
    assert "schema" in message
    assert where in message


@pytest.mark.parametrize(
    ("values", "overrides", "says"),
    [
        (
            NODE,
            {"node.models": [{"name": "a", "path": "/m/a", "sizeBytes": 1}] * 2},
            'the name "a" is given twice',
        ),
        (
            NODE,
            {
                "node.models": [
                    {"name": "a", "path": "/m/a", "sizeBytes": 1},
                    {"name": "b", "path": "/m/a", "sizeBytes": 1},
                ]
            },
            'the path /m/a is given twice (models "a" and "b")',
        ),
        (NODE, {"node.modelsDirSizeBytes": 0}, "node.modelsDirSizeBytes (du -sbL <dir>)"),
        (
            NFD,
            {"pagewarm.runAsUser": 65532, "pagewarm.runAsNonRoot": True},
            "UID 65532 cannot create a file there. Set pagewarm.runAsUser=0",
        ),
        (
            SIDECAR,
            {"placement.preferWarmNodes": True, "placement.labelPrefix": ""},
            "placement.preferWarmNodes is true but placement.labelPrefix is empty",
        ),
        (
            SIDECAR,
            {"model.name": "---"},
            'the model name "---" has no letter or digit',
        ),
    ],
)
def test_templates_refuse_values_that_do_not_fit(
    values: list[Any], overrides: dict[str, Any], says: str
) -> None:
    assert says in refusal(values, overrides)


# Placement on warm nodes.


def preferred_terms(overrides: dict[str, Any], values: list[Any] = SIDECAR) -> list[Any]:
    pod = chart.pod_spec(chart.render(values, overrides).one("Deployment"))
    terms: list[Any] = pod.get("affinity", {}).get("nodeAffinity", {}).get(WARM_AFFINITY, [])
    return terms


def warm_term(key: str, weight: int = 50) -> dict[str, Any]:
    expression = {"key": key, "operator": "In", "values": ["true"]}
    return {"weight": weight, "preference": {"matchExpressions": [expression]}}


def test_the_deployment_prefers_the_nodes_where_its_model_is_warm() -> None:
    # ci/sidecar: model.name meta-llama/Llama-3.1-8B-Instruct
    key = "pagewarm.io/warm-meta-llama-llama-3.1-8b-instruct"
    assert preferred_terms({}) == [warm_term(key)]
    assert preferred_terms({}, [chart.values_file("init")]) != []
    assert preferred_terms({"placement.weight": 7}) == [warm_term(key, 7)]
    assert preferred_terms({"placement.labelPrefix": "example.com/"}) == [
        warm_term("example.com/warm-meta-llama-llama-3.1-8b-instruct")
    ]


def test_the_preference_is_never_required_and_keeps_the_users_affinity() -> None:
    mine = {
        "weight": 10,
        "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]},
    }
    required = {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
        ]
    }
    affinity = {
        "nodeAffinity": {
            WARM_AFFINITY: [mine],
            "requiredDuringSchedulingIgnoredDuringExecution": required,
        },
        "podAntiAffinity": {"x": 1},
    }
    pod = chart.pod_spec(chart.render(SIDECAR, {"pod.affinity": affinity}).one("Deployment"))
    node_affinity = pod["affinity"]["nodeAffinity"]
    assert node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] == required
    assert node_affinity[WARM_AFFINITY][0] == mine
    assert len(node_affinity[WARM_AFFINITY]) == 2
    assert pod["affinity"]["podAntiAffinity"] == {"x": 1}
    # Without a user affinity nothing is required either.
    pod = chart.pod_spec(chart.render(SIDECAR).one("Deployment"))
    assert set(pod["affinity"]["nodeAffinity"]) == {WARM_AFFINITY}


@pytest.mark.parametrize(
    "overrides",
    [{"placement.preferWarmNodes": False}, {"placement.labelPrefix": ""}],
    ids=["off", "no-prefix"],
)
def test_the_preference_can_be_turned_off(overrides: dict[str, Any]) -> None:
    assert preferred_terms(overrides) == []
    pod = chart.pod_spec(chart.render(SIDECAR, overrides).one("Deployment"))
    assert "affinity" not in pod


def test_the_daemonset_gets_no_warm_preference() -> None:
    assert "affinity" not in chart.pod_spec(chart.render(NFD).one("DaemonSet"))


def contract_warm_label(name: str) -> str:
    """NODE_CONTRACT.md's slug, written from its text (the reference the chart must match)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower())
    slug = re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", slug)
    if len("warm-" + slug) > 63:
        slug = slug[: 63 - 5 - 9] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return "warm-" + slug


AWKWARD_NAMES = [
    "llama-3-8b",
    "Llama-3-8B",
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "models--org--name",
    "..dots..and__under__scores..",
    "-_.leading and trailing._-",
    "spaces  and\ttabs / slashes",
    "UPPER_CASE.V2",
    "Modèle-über/größe",
    "İstanbul-Model",  # Python's lower() gives "i" and a combining dot, Go's "i"
    "x" * 58,  # "warm-" + 58 = 63: no hash
    "x" * 59,  # one more: cut and hashed
    "a" * 80,
    "Org/" + "B" * 80,
    "a" * 48 + "/" + "b" * 20,  # the cut ends in "-"
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B-Instruct-AWQ-4bit-gptq-v2",
]


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_the_warm_label_is_the_contracts(name: str) -> None:
    (term,) = preferred_terms({"model.name": name})
    key = term["preference"]["matchExpressions"][0]["key"]
    prefix, label = key.split("/", 1)
    assert prefix == "pagewarm.io"
    assert label == contract_warm_label(name)
    # A valid label name: at most 63 characters, alphanumeric at both ends.
    assert len(label) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9_.]*[a-z0-9])?", label)
    # The agent's own implementation, once it is in the tree, must agree too.
    if importlib.util.find_spec("controller.node") and importlib.util.find_spec(
        "controller.node.labels"
    ):
        labels = importlib.import_module("controller.node.labels")
        assert labels.warm_label_name(name) == label
