"""A fleet of three node agents, real processes, scraped by one real Prometheus.

Each node has its own models (its own files: the page cache is this machine's, so a
node's models are its own copies), features directory, node name and memory cgroup
(plus a cgroup2 group for its PSI where memory is on v1). node-c's cgroup is too small
for its declared set. Truth is vmtouch's count, apart from the agents.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from controller.node.labels import warm_label_key
from controller.synth import synth
from tests.node.fleet import NodeCgroups, node_cgroups, vmtouch_ratio
from tests.node.nfd import read_features_dir
from tests.prometheus import (
    ExporterHandle,
    PrometheusHandle,
    running_prometheus,
    running_server,
)
from tests.support import disk_directory, evict_path, pagewarm, require_root, write_random

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20
INTERVAL = 0.5
WARM = 0.95
RATE_A = 32 * MiB  # node-a's --rate-limit: a 64 MiB re-warm takes ~2 s, four intervals
WAIT = 120.0
T = TypeVar("T")


@dataclass
class Node:
    name: str
    root: Path
    models: dict[str, tuple[int, int]]  # name -> (size, priority)
    cgroups: NodeCgroups
    agent: ExporterHandle | None = None

    @property
    def features(self) -> Path:
        return self.root / "features.d"

    @property
    def config(self) -> Path:
        return self.root / "models.yaml"

    def model_path(self, model: str) -> Path:
        return self.root / "models" / model

    def write_config(self, priorities: dict[str, int] | None = None) -> None:
        lines = ["models:"]
        for model, (_, priority) in self.models.items():
            chosen = (priorities or {}).get(model, priority)
            lines.append(
                f"  - {{name: {model}, path: {self.model_path(model)}, priority: {chosen}}}"
            )
        self.config.write_text("\n".join(lines) + "\n")

    def status(self) -> dict[str, Any]:
        assert self.agent is not None
        return dict(json.loads(self.agent.get("/status")))

    def truth(self) -> dict[str, float]:
        return {m: vmtouch_ratio(self.model_path(m)) for m in self.models}

    def labels(self) -> dict[str, str]:
        return read_features_dir(self.features)


def wait_until(
    what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout: float = WAIT
) -> T:
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {value}")
        time.sleep(0.1)
        value = probe()
    return value


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[dict[str, Node], PrometheusHandle]]:
    require_root("memory cgroups for the fleet's nodes")
    base = disk_directory("pagewarm-fleet-")
    specs = {
        "node-a": (
            {"llama": (64 * MiB, 10), "qwen": (48 * MiB, 5)},
            1 << 30,
            ["--rate-limit", f"{RATE_A}"],
        ),
        "node-b": ({"llama": (64 * MiB, 10), "mistral": (32 * MiB, 0)}, 1 << 30, []),
        # Too small: the agent (~80 MiB), high (96 MiB) and the reserve leave ~45 MiB for low.
        "node-c": (
            {"high": (96 * MiB, 100), "low": (96 * MiB, 1)},
            256 * MiB,
            ["--reserve", "32MiB", "--pressure-threshold", "0.05", "--hold-off", "3s"],
        ),
    }
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)
        nodes: dict[str, Node] = {}
        for name, (models, limit, flags) in specs.items():
            cgroups = stack.enter_context(node_cgroups(limit))
            node = Node(name, base / name, models, cgroups)
            for model, (size, _) in models.items():
                synth(node.model_path(model), size, shards=2)
                evict_path(node.model_path(model))  # charged to the agent's cgroup when it reads
            node.write_config()
            node.agent = stack.enter_context(
                running_server(
                    "node",
                    "--config",
                    node.config,
                    "--nfd-features-dir",
                    node.features,
                    "--node-name",
                    name,
                    "--interval",
                    f"{INTERVAL}s",
                    "--thrash-evictions",
                    "50",  # DAMON pages out idle cache here: not thrash
                    *flags,
                    prefix=cgroups.join_prefix(),
                )
            )
            nodes[name] = node
        static = [
            {"targets": [n.agent.target], "labels": {"node": n.name}}
            for n in nodes.values()
            if n.agent is not None
        ]
        prom = stack.enter_context(running_prometheus([], INTERVAL, static_configs=static))
        prom.wait_for_targets_up()
        yield nodes, prom
        for node in nodes.values():
            assert node.cgroups.memory.oom_kills() == 0, node.name


def promql_map(prom: PrometheusHandle) -> dict[tuple[str, str], bool]:
    return {
        (r["metric"]["node"], r["metric"]["model"]): float(r["value"][1]) == 1.0
        for r in prom.query("pagewarm_model_warm")
    }


def truth_map(nodes: dict[str, Node]) -> dict[tuple[str, str], bool]:
    return {
        (node.name, model): ratio >= WARM
        for node in nodes.values()
        for model, ratio in node.truth().items()
    }


EXPECTED = {
    ("node-a", "llama"): True,
    ("node-a", "qwen"): True,
    ("node-b", "llama"): True,
    ("node-b", "mistral"): True,
    ("node-c", "high"): True,
    ("node-c", "low"): False,
}


def test_warm_map_from_promql_equals_vmtouch_truth(
    fleet: tuple[dict[str, Node], PrometheusHandle],
) -> None:
    nodes, prom = fleet

    def both() -> tuple[dict[tuple[str, str], bool], dict[tuple[str, str], bool]]:
        return promql_map(prom), truth_map(nodes)

    found, truth = wait_until(
        "PromQL's map = vmtouch's = expected", both, lambda v: v[0] == v[1] == EXPECTED
    )
    assert found == truth == EXPECTED


def test_features_files_parse_as_nfd_and_name_the_warm_models(
    fleet: tuple[dict[str, Node], PrometheusHandle],
) -> None:
    nodes, _ = fleet
    for node in nodes.values():
        expected = {
            warm_label_key(m): "true"
            for (n, m), warm in EXPECTED.items()
            if n == node.name and warm
        }
        labels = wait_until(
            f"{node.name}'s labels", node.labels, lambda found, e=expected: found == e
        )
        assert labels == expected
        status = node.status()
        assert {m["label"] for m in status["models"] if m["warm"]} == set(expected)


def test_evicted_model_loses_its_label_and_gets_it_back_within_the_rate_limit(
    fleet: tuple[dict[str, Node], PrometheusHandle],
) -> None:
    nodes, prom = fleet
    node = nodes["node-a"]
    key = warm_label_key("llama")
    wait_until("llama warm on node-a", node.labels, lambda labels: key in labels)
    before = next(m for m in node.status()["models"] if m["name"] == "llama")["rewarm_bytes_total"]
    evicted = time.monotonic()
    pagewarm("evict", node.model_path("llama"), check=True)
    wait_until("the label line to go", node.labels, lambda labels: key not in labels, timeout=30)
    gone = time.monotonic()
    prom.wait_for_value('pagewarm_model_warm{node="node-a",model="llama"}', lambda v: v == 0.0, 30)
    wait_until("the label line to come back", node.labels, lambda labels: key in labels)
    back = time.monotonic()
    assert vmtouch_ratio(node.model_path("llama")) >= WARM
    after = next(m for m in node.status()["models"] if m["name"] == "llama")["rewarm_bytes_total"]
    rewarmed = after - before
    size = node.models["llama"][0]
    assert rewarmed >= 0.9 * size
    # The rate limit is an upper bound: the bytes re-read cannot have come in faster.
    assert rewarmed / (back - evicted) <= 1.1 * RATE_A
    prom.wait_for_value('pagewarm_model_warm{node="node-a",model="llama"}', lambda v: v == 1.0, 30)
    print(  # the figures of the closing note (pytest -s)
        f"label gone {gone - evicted:.2f} s after the eviction, back {back - gone:.2f} s later; "
        f"re-warm {rewarmed / (back - evicted) / MiB:.1f} MiB/s, --rate-limit "
        f"{RATE_A / MiB:.0f} MiB/s"
    )


def test_small_node_keeps_high_priority_warm_and_leaves_low_partial(
    fleet: tuple[dict[str, Node], PrometheusHandle],
) -> None:
    nodes, prom = fleet
    node = nodes["node-c"]
    truth = wait_until(
        "high warm, low partial on node-c",
        node.truth,
        lambda t: t["high"] >= WARM and 0.05 < t["low"] < 0.9,
    )
    assert truth["high"] >= WARM
    assert 0.05 < truth["low"] < 0.9
    labels = node.labels()
    assert warm_label_key("high") in labels
    assert warm_label_key("low") not in labels
    prom.wait_for_value(
        'pagewarm_node_backoffs_total{node="node-c",reason="budget"}', lambda v: v > 0, 30
    )
    assert prom.value('pagewarm_model_warm{node="node-c",model="low"}') == 0.0
    assert node.cgroups.memory.oom_kills() == 0
    assert node.agent is not None and node.agent.process.poll() is None


# A workload whose working set outgrows what the cgroup has left, over and over: it takes
# 96 MiB of its own memory, gives it back, reads its own 64 MiB file, and again. Each round
# the kernel must reclaim page cache before it can give the memory (the stall PSI counts).
# It drops its file's pages when it ends, as a well-behaved job does.
WORKLOAD = """
import os, sys, time
end = time.monotonic() + 8
while time.monotonic() < end:
    block = bytearray(96 << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    del block
    fd = os.open(sys.argv[1], os.O_RDONLY)
    while os.read(fd, 1 << 20):
        pass
    os.close(fd)
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
"""


def test_memory_pressure_backs_off_without_oom_and_rewarms_after_the_hold_off(
    fleet: tuple[dict[str, Node], PrometheusHandle],
) -> None:
    nodes, _ = fleet
    node = nodes["node-c"]
    wait_until("node-c settled", node.truth, lambda t: t["high"] >= WARM)
    pressure_before = node.status()["backoffs"]["memory_pressure"]
    data = write_random(node.root / "workload.bin", 64 * MiB)
    evict_path(data)  # charged to the cgroup as the workload reads it
    workload = subprocess.Popen(
        [*node.cgroups.join_prefix(), sys.executable, "-c", WORKLOAD, str(data)]
    )
    try:
        wait_until(
            "a memory_pressure back-off",
            node.status,
            lambda s: s["backoffs"]["memory_pressure"] > pressure_before,
            timeout=60,
        )
        assert workload.wait(60) == 0  # finished, not OOM-killed
    finally:
        if workload.poll() is None:
            workload.kill()
            workload.wait()
    assert node.cgroups.memory.oom_kills() == 0
    rewarmed_at_exit = sum(m["rewarm_bytes_total"] for m in node.status()["models"])
    wait_until(
        "re-warming after the hold-off",
        node.status,
        lambda s: (
            s["hold_off_seconds_left"] == 0
            and sum(m["rewarm_bytes_total"] for m in s["models"]) > rewarmed_at_exit
        ),
    )
    truth = wait_until("high warm again", node.truth, lambda t: t["high"] >= WARM)
    assert truth["high"] >= WARM
    assert warm_label_key("high") in wait_until(
        "high's label", node.labels, lambda lab: warm_label_key("high") in lab
    )


def test_config_change_reorders_priorities_and_a_broken_one_keeps_the_last_good(
    fleet: tuple[dict[str, Node], PrometheusHandle],
) -> None:
    nodes, prom = fleet
    node = nodes["node-c"]
    node.write_config({"low": 200})
    truth = wait_until(
        "low warm, high partial after the swap",
        node.truth,
        lambda t: t["low"] >= WARM and t["high"] < 0.9,
    )
    assert truth["low"] >= WARM
    only_low = {warm_label_key("low"): "true"}
    assert wait_until("the labels to follow", node.labels, lambda lab: lab == only_low) == only_low
    assert node.status()["config"]["reloads"] >= 1
    node.config.write_text("models: [{name: low, path: /x}, {name: low, path: /y}]\n")
    status = wait_until(
        "the broken config reported", node.status, lambda s: not s["config"]["valid"]
    )
    assert "unique" in status["config"]["error"]
    assert {m["name"] for m in status["models"]} == {"high", "low"}  # the last good one
    prom.wait_for_value('pagewarm_node_config_valid{node="node-c"}', lambda v: v == 0.0, 30)
    # The last good config still rules: low stays the one kept warm and labelled.
    assert wait_until("low labelled", node.labels, lambda lab: lab == only_low) == only_low
