"""The node agent's DaemonSet (ci/node-nfd-values.yaml), run for real the way the kubelet
would start it (kubelet.py): the rendered command line, the model list from the rendered
ConfigMap, the models read-only at their host paths, NFD's features.d the one writable host
directory, root with CAP_FOWNER only. It must keep the listed models warm and write the
node labels that the chart's vLLM Deployment prefers: the agent's labels and the chart's
affinity are the same strings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.synth import synth
from tests.deploy import chart, kubelet
from tests.deploy.test_rendered_containers import (
    chown_tree,
    metric,
    resident_ratio,
    scrape_until,
    start_and_probe,
)
from tests.support import evict_path, require_root

pytestmark = pytest.mark.slow
MODEL_BYTES = 16 << 20


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    require_root("the agent runs as its rendered UID, capabilities and read-only root")


@pytest.fixture
def sandbox() -> Iterator[Path]:
    path = kubelet.sandbox("node-agent")
    yield path
    kubelet.remove(path)


def preferred_label(model_name: str) -> str:
    """The warm label the chart's Deployment prefers for this model."""
    deployment = chart.render([chart.values_file("sidecar")], {"model.name": model_name})
    pod = chart.pod_spec(deployment.one("Deployment"))
    (term,) = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    key: str = term["preference"]["matchExpressions"][0]["key"]
    return key


def wait_for_lines(path: Path, expected: set[str], timeout: float = 120) -> set[str]:
    """The feature file's lines once they are `expected` (an event, with a wide window)."""
    deadline = time.monotonic() + timeout
    lines: set[str] = set()
    while time.monotonic() < deadline:
        if path.is_file():
            lines = {line for line in path.read_text().splitlines() if line.strip()}
            if lines == expected:
                return lines
        time.sleep(0.2)
    return lines


def test_the_agent_keeps_its_models_warm_and_labels_the_node(sandbox: Path) -> None:
    # ci/node-nfd's model list, at host paths of this machine: the agent reads its config
    # as written, and the chart mounts each model at its own host path.
    values = yaml.safe_load(chart.values_file("node-nfd").read_text())
    models: list[dict[str, Any]] = [
        {**model, "path": str(sandbox / "host" / f"model-{index}")}
        for index, model in enumerate(values["node"]["models"])
    ]
    volumes: dict[str, Path] = {}
    for index, model in enumerate(models):
        local = Path(model["path"])
        synth(local, MODEL_BYTES, shards=2)
        chown_tree(local, 0)
        evict_path(local)
        volumes[f"node-model-{index}"] = local
    features = sandbox / "host" / "features.d"
    features.mkdir()
    volumes["nfd-features"] = features
    overrides = {"node.interval": "1s", "node.models": models}
    rendered = chart.render([chart.values_file("node-nfd")], overrides)
    pod_spec = chart.pod_spec(rendered.one("DaemonSet"))
    with kubelet.Pod.create(pod_spec, rendered.manifests, sandbox, volumes) as pod:
        agent = kubelet.prepare(pod, pod_spec["containers"][0])
        log = sandbox / "agent.log"
        process, _ = start_and_probe(agent, log, "readinessProbe")
        try:
            expected = {f"{preferred_label(m['name'])}=true" for m in models}
            lines = wait_for_lines(features / "pagewarm", expected)
            assert lines == expected, log.read_text()
            url = f"http://127.0.0.1:{agent.ports['metrics']}/metrics"
            text = scrape_until(
                url,
                lambda t: all(
                    metric(t, "pagewarm_model_warm", model=m["name"]) == 1 for m in models
                ),
                timeout=60,
            )
            # The agent never sets `node` itself: the monitors add it from the pod.
            assert 'node="' not in text
            for index, _ in enumerate(models):
                assert resident_ratio(volumes[f"node-model-{index}"]) >= 0.95
        finally:
            code = kubelet.stop(process)
        assert code == 0, log.read_text()
    # Nothing else on the "host" was written: the models are as they were.
    assert sorted(p.name for p in features.iterdir()) == ["pagewarm"]
