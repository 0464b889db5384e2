"""The chart's containers, run for real: the command, args and env that `helm template`
renders, started as local processes the way the kubelet would start them (see
kubelet.py: the image's entrypoint, volumes mapped to local directories, the rendered
user, capabilities and read-only root), against a synthetic model. They must start and
serve what their probes and the ServiceMonitor expect. This is where the chart and the
CLI meet: a renamed flag, a probe path the server does not serve, an env var the
command does not read, a write outside the volumes, all fail here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.prewarm import DEFAULT_CHUNK_BYTES
from controller.synth import synth
from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.deploy import chart, dockerfile, kubelet
from tests.support import REPO, evict_path, require_root

MODEL_BYTES = 48 << 20
# The sidecar's tests' stand-in for vLLM: sleeps like vLLM's start, then reads every
# tensor, logs "Model loading took ...", and only then answers /health with 200.
FAKE_VLLM = REPO / "tests" / "sidecar" / "fake_vllm.py"
PAGEWARM_UID = 65532

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    require_root("the containers run as their rendered UID, capabilities and read-only root")


@pytest.fixture
def sandbox() -> Iterator[Path]:
    path = kubelet.sandbox("pod")
    yield path
    kubelet.remove(path)


def place_model(root: Path, container_path: str, mount_path: str, owner: int) -> Path:
    """A synthetic model where `container_path` is, under a volume mounted at `mount_path`;
    returns the volume's local directory."""
    volume = root / "model-volume"
    relative = Path(container_path).relative_to(mount_path)
    model = volume / relative
    synth(model, MODEL_BYTES, shards=3)
    chown_tree(volume, owner)
    evict_path(model)
    return volume


def chown_tree(path: Path, owner: int) -> None:
    for item in [path, *path.rglob("*")]:
        os.chown(item, owner, owner)
        item.chmod(0o755 if item.is_dir() else 0o644)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one series of a Prometheus text exposition (None: absent)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def resident_ratio(model: Path) -> float:
    measured = ResidencyProbe().measure(discover(model))
    assert measured.ratio is not None, measured.unknown_reasons
    return measured.ratio


def scrape_until(url: str, done: Callable[[str], bool], timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status, text = kubelet.http_get(url)
        if status == 200 and done(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never showed the expected series:\n{text}")
        time.sleep(0.3)


def start_and_probe(
    container: kubelet.LocalContainer, log: Path, probe: str
) -> tuple[subprocess.Popen[bytes], str]:
    process = container.start(log)
    url = container.probe_url(probe)
    kubelet.wait_for(url, process, log, timeout=90)
    return process, url


def wait_for_status(
    port: int, holds: Callable[[dict[str, Any]], Any], timeout: float = 60.0
) -> dict[str, Any]:
    """The sidecar's /status once ``holds`` is true of it (an event, not a clock)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = kubelet.http_get(f"http://127.0.0.1:{port}/status")
        assert status == 200, body
        state: dict[str, Any] = json.loads(body)
        if holds(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def test_sidecar_gates_vllm_and_times_its_load(sandbox: Path) -> None:
    """The pod of ci/sidecar-values.yaml, started as the kubelet starts it: the native
    sidecar warms the model and opens the gate its startupProbe watches; only then does
    "vLLM" start (a stand-in that really reads the weights, with the rendered model path,
    port, volumes and log file; vLLM itself needs a GPU); the sidecar finds its process in
    the shared PID namespace, times it until the rendered health URL answers, reads the
    log through the shared volume, and serves it all on the port the ServiceMonitor
    scrapes; SIGTERM stops both cleanly."""
    rendered = chart.render([chart.values_file("sidecar")])
    pod_spec = chart.pod_spec(rendered.one("Deployment"))
    values = chart.values_yaml()
    model_path = "/models/Llama-3.1-8B-Instruct"
    model = "meta-llama/Llama-3.1-8B-Instruct"  # --model-name from the values
    volume = place_model(sandbox, model_path, "/models", owner=PAGEWARM_UID)
    with kubelet.Pod.create(pod_spec, rendered.manifests, sandbox, {"model": volume}) as pod:
        sidecar = kubelet.prepare(pod, chart.container(pod_spec, "pagewarm"))
        local_model = sidecar.local_path(model_path)
        assert resident_ratio(local_model) < 0.05
        log = sandbox / "sidecar.log"
        process, _ = start_and_probe(sidecar, log, "startupProbe")
        try:
            # gate full: the probe passes once the weights are resident.
            assert resident_ratio(local_model) > 0.95
            kubelet.wait_for(sidecar.probe_url("livenessProbe"), process, log)
            port = sidecar.ports["metrics"]
            assert port == sidecar.port_map[values["pagewarm"]["port"]]
            url = f"http://127.0.0.1:{port}/metrics"
            status, text = kubelet.http_get(url)
            assert status == 200
            assert metric(text, "pagewarm_sidecar_gate_open") == 1
            assert metric(text, "pagewarm_sidecar_gate_info", policy="full") == 1
            weight_set = discover(local_model)
            assert metric(text, "pagewarm_model_size_bytes", model=model) == weight_set.total_bytes
            assert metric(text, "pagewarm_model_files", model=model) == len(weight_set.files)
            # Run as the files' owner, residency is truthful (README "Truthful residency").
            assert metric(text, "pagewarm_model_residency_trusted", model=model) == 1
            ratio = metric(text, "pagewarm_model_resident_ratio", model=model)
            assert ratio is not None and ratio > 0.95
            # What the sidecar says it was told: the rendered flags and env reached it.
            # Keep-warm starts once the warm is done, a moment after the gate opened.
            state = wait_for_status(port, lambda s: s["keep_warm"]["enabled"])
            assert state["gate"]["policy"] == "full"
            assert state["gate"]["timeout_seconds"] == 600  # ci/sidecar-values.yaml
            assert state["keep_warm"]["enabled"] is True
            assert state["mlock"]["requested"] is False
            # The rendered thread count, capped at one reader per chunk (the stand-in
            # model has fewer chunks than a real one).
            chunks = sum(-(-f.size // DEFAULT_CHUNK_BYTES) for f in weight_set.files)
            expected_threads = min(values["prewarm"]["threads"], chunks)
            assert state["prewarm"]["result"]["threads"] == expected_threads
            assert state["prewarm"]["result"]["residency_trusted"] is True

            vllm_process = start_vllm_stand_in(pod, pod_spec, rendered, sandbox)
            try:
                text = scrape_until(
                    url,
                    lambda t: (
                        metric(
                            t,
                            "pagewarm_loads_total",
                            model=model,
                            mode="prewarm_cold",
                            outcome="ok",
                        )
                        == 1
                    ),
                    timeout=60,
                )
                duration = metric(
                    text, "pagewarm_last_load_duration_seconds", model=model, mode="prewarm_cold"
                )
                assert duration is not None and duration > 0
            finally:
                assert kubelet.stop(vllm_process) == 0
            # Samples go to the state volume (PAGEWARM_SAMPLES), not the read-only root.
            samples_file = sidecar.local_path("/var/lib/pagewarm/samples.jsonl")
            samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
            assert [s["kind"] for s in samples] == ["prewarm", "load"]
            load = samples[1]
            assert load["source"] == "sidecar"
            assert load["model"] == model
            # Timed from vLLM's process start: the shared PID namespace let it see vLLM.
            assert load["timing_origin"] == "process_start"
            # vLLM's "Model loading took ..." line reached it through the shared log volume.
            assert load["vllm_model_load_seconds"] is not None
        finally:
            code = kubelet.stop(process)
    assert code == 0, log.read_text()
    assert "Read-only file system" not in log.read_text()


def start_vllm_stand_in(
    pod: kubelet.Pod, pod_spec: dict[str, Any], rendered: chart.Rendered, sandbox: Path
) -> subprocess.Popen[bytes]:
    """The rendered vLLM container with the stand-in as its program: the rendered model
    path, host and port (vLLM's own tuning flags dropped), its volumes, and the log file
    that the rendered VLLM_LOGGING_CONFIG_PATH names."""
    container = chart.container(pod_spec, "vllm")
    args = container["args"]
    kept = [args[0]]
    for flag in ("--host", "--port"):
        kept += [flag, args[args.index(flag) + 1]]
    env = {e["name"]: e["value"] for e in container["env"]}
    config_path = Path(env["VLLM_LOGGING_CONFIG_PATH"])
    config_map = next(
        m for m in rendered.of_kind("ConfigMap") if config_path.name in m.get("data", {})
    )
    logging_config = json.loads(config_map["data"][config_path.name])
    log_file = logging_config["handlers"]["file"]["filename"]
    stand_in = {
        **container,
        "command": [sys.executable, str(FAKE_VLLM)],
        # `--instance vllm` puts the word vllm on its command line, as `vllm serve` has it:
        # the sidecar's default process pattern finds it so.
        "args": [*kept, "--startup-seconds", "0.5", "--log-file", log_file, "--instance", "vllm"],
    }
    # vLLM's image runs as root; no image user applies to the stand-in.
    image = dockerfile.Image([], [], {}, "0", "/", [], {})
    vllm = kubelet.prepare(pod, stand_in, image)
    log = sandbox / "vllm.log"
    process = vllm.start(log)
    kubelet.wait_for(vllm.probe_url("readinessProbe"), process, log, timeout=60)
    return process


def test_snippet_sidecar_runs_in_a_users_pod(sandbox: Path) -> None:
    """The snippet's container, in a pod whose model volume is the user's own."""
    rendered = chart.render([chart.values_file("sidecar-snippet")])
    patch_spec = chart.pod_spec(chart.snippet_patch(rendered))
    model_path = "/data/models/Qwen2.5-7B-Instruct"
    volume = place_model(sandbox, model_path, "/data/models", owner=PAGEWARM_UID)
    pod = kubelet.Pod.create(patch_spec, rendered.manifests, sandbox, {"model-cache": volume})
    sidecar = kubelet.prepare(pod, chart.container(patch_spec, "pagewarm"))
    log = sandbox / "snippet.log"
    process, _ = start_and_probe(sidecar, log, "startupProbe")
    try:
        status, text = kubelet.http_get(f"http://127.0.0.1:{sidecar.ports['metrics']}/metrics")
        assert status == 200
        assert metric(text, "pagewarm_sidecar_gate_info", policy="ratio:0.9") == 1
        files = len(discover(sidecar.local_path(model_path)).files)
        assert metric(text, "pagewarm_model_files", model="Qwen2.5-7B-Instruct") == files
    finally:
        code = kubelet.stop(process)
    assert code == 0, log.read_text()


def test_init_warms_and_exits_while_the_exporter_watches(sandbox: Path) -> None:
    rendered = chart.render([chart.values_file("init")])
    pod_spec = chart.pod_spec(rendered.one("Deployment"))
    model_path = "/models/mistral-7b"
    volume = place_model(sandbox, model_path, "/models", owner=PAGEWARM_UID)
    pod = kubelet.Pod.create(pod_spec, rendered.manifests, sandbox, {"model": volume})
    exporter_spec, init_spec = pod_spec["initContainers"]
    exporter = kubelet.prepare(pod, exporter_spec)
    init = kubelet.prepare(pod, init_spec)
    local_model = init.local_path(model_path)
    log = sandbox / "exporter.log"
    # The kubelet starts the native sidecar first, then the init container.
    process, _ = start_and_probe(exporter, log, "livenessProbe")
    try:
        url = f"http://127.0.0.1:{exporter.ports['metrics']}/metrics"
        before = metric(
            kubelet.http_get(url)[1], "pagewarm_model_resident_ratio", model="mistral-7b"
        )
        assert before is not None and before < 0.05
        result = init.run(timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert resident_ratio(local_model) > 0.95
        # Scrapes within a second share one collection: poll past that.
        text = scrape_until(
            url,
            lambda t: (metric(t, "pagewarm_model_resident_ratio", model="mistral-7b") or 0) > 0.95,
        )
        # The init container's pre-warm sample reached the exporter through the state volume.
        runs = metric(text, "pagewarm_prewarm_runs_total", model="mistral-7b", outcome="ok")
        assert runs == 1, text
    finally:
        code = kubelet.stop(process)
    assert code == 0, log.read_text()


def test_init_refuses_a_missing_model(sandbox: Path) -> None:
    """A wrong model.path fails the init container with a clear message (the pod shows
    Init:Error instead of serving a model it never warmed)."""
    rendered = chart.render([chart.values_file("init")], {"model.path": "/models/absent"})
    pod_spec = chart.pod_spec(rendered.one("Deployment"))
    volume = sandbox / "empty-volume"
    volume.mkdir()
    pod = kubelet.Pod.create(pod_spec, rendered.manifests, sandbox, {"model": volume})
    result = kubelet.prepare(pod, pod_spec["initContainers"][-1]).run(timeout=60)
    assert result.returncode != 0
    assert "absent" in result.stdout + result.stderr


def node_exporter(
    sandbox: Path, owner: int, overrides: dict[str, Any] | None = None
) -> tuple[kubelet.LocalContainer, list[str]]:
    rendered = chart.render([chart.values_file("node")], overrides)
    pod_spec = chart.pod_spec(rendered.one("DaemonSet"))
    cache = sandbox / "node-cache"
    names = ["llama-3-8b", "qwen-7b"]
    for name in names:
        synth(cache / name, 16 << 20, shards=2)
    chown_tree(cache, owner)
    pod = kubelet.Pod.create(pod_spec, rendered.manifests, sandbox, {"node-models": cache})
    return kubelet.prepare(pod, pod_spec["containers"][0]), names


def test_node_exporter_serves_every_model_of_the_cache(sandbox: Path) -> None:
    exporter, names = node_exporter(sandbox, owner=PAGEWARM_UID)
    log = sandbox / "node.log"
    process, _ = start_and_probe(exporter, log, "readinessProbe")
    try:
        status, text = kubelet.http_get(f"http://127.0.0.1:{exporter.ports['metrics']}/metrics")
        assert status == 200
        for name in names:
            files = len(discover(exporter.local_path(f"/models/{name}")).files)
            assert metric(text, "pagewarm_model_files", model=name) == files
            assert metric(text, "pagewarm_model_residency_trusted", model=name) == 1
    finally:
        code = kubelet.stop(process)
    assert code == 0, log.read_text()


@pytest.mark.parametrize(
    ("owner", "overrides", "trusted"),
    [
        # The default: UID 65532 with CAP_FOWNER added. Kubernetes puts the capability in
        # the bounding set only; a non-root process has none effective. Truthful for the
        # files it owns, unknown for the others.
        (PAGEWARM_UID, {}, 1),
        (1000, {}, 0),
        # Root with CAP_FOWNER as its only capability: truthful whoever owns the files.
        (1000, {"pagewarm.runAsUser": 0, "pagewarm.runAsNonRoot": False}, 1),
        # Root without it: not the owner, no capability, no write permission: unknown.
        (
            1000,
            {"pagewarm.runAsUser": 0, "pagewarm.runAsNonRoot": False, "pagewarm.fowner": False},
            0,
        ),
    ],
    ids=["owner", "not-owner", "root-fowner", "root-without-fowner"],
)
def test_residency_is_truthful_only_where_kubernetes_grants_it(
    sandbox: Path, owner: int, overrides: dict[str, Any], trusted: int
) -> None:
    exporter, names = node_exporter(sandbox, owner, overrides)
    expected_caps = (
        {"FOWNER"} if exporter.uid == 0 and overrides.get("pagewarm.fowner", True) else set()
    )
    assert exporter.effective_capabilities == expected_caps
    log = sandbox / "node.log"
    process, _ = start_and_probe(exporter, log, "readinessProbe")
    try:
        text = kubelet.http_get(f"http://127.0.0.1:{exporter.ports['metrics']}/metrics")[1]
        for name in names:
            assert metric(text, "pagewarm_model_residency_trusted", model=name) == trusted
            ratio = metric(text, "pagewarm_model_resident_ratio", model=name)
            # Unknown is absent, never a made-up 100%.
            assert (ratio is not None) == bool(trusted)
    finally:
        kubelet.stop(process)


# The node agent's DaemonSet of ci/node-nfd-values.yaml: the model list from the rendered
# ConfigMap, the models read-only at their host paths, NFD's features.d the one writable
# host directory, root with CAP_FOWNER only. It must keep the listed models warm and write
# the node labels that the chart's vLLM Deployment prefers: the agent's labels and the
# chart's affinity are the same strings.
NODE_AGENT_MODEL_BYTES = 16 << 20


def preferred_label(model_name: str) -> str:
    """The warm label the chart's Deployment prefers for this model."""
    deployment = chart.render([chart.values_file("sidecar")], {"model.name": model_name})
    pod = chart.pod_spec(deployment.one("Deployment"))
    (term,) = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    key: str = term["preference"]["matchExpressions"][0]["key"]
    return key


def wait_for_feature_lines(path: Path, expected: set[str], timeout: float = 120) -> set[str]:
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
        synth(local, NODE_AGENT_MODEL_BYTES, shards=2)
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
            lines = wait_for_feature_lines(features / "pagewarm", expected)
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


def test_the_emulated_root_filesystem_is_read_only(sandbox: Path) -> None:
    """The emulation itself: a write to a volume works, a write to the root fails."""
    state = sandbox / "state"
    state.mkdir()

    def touch(path: str) -> subprocess.CompletedProcess[str]:
        container: dict[str, Any] = {
            "name": "probe",
            "command": ["/usr/bin/touch", path],
            "volumeMounts": [{"name": "state", "mountPath": "/var/lib/pagewarm"}],
            "securityContext": {"readOnlyRootFilesystem": True, "runAsUser": 0},
        }
        spec = {"volumes": [{"name": "state", "emptyDir": {}}], "containers": [container]}
        pod = kubelet.Pod.create(spec, [], sandbox, {"state": state})
        return kubelet.prepare(pod, container).run(timeout=30)

    assert touch("/var/lib/pagewarm/ok").returncode == 0
    assert (state / "ok").exists()
    outside = touch(str(sandbox / "outside"))
    assert outside.returncode != 0
    assert "Read-only file system" in outside.stderr
    assert not (sandbox / "outside").exists()
