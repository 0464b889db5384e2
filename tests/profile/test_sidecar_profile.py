"""The sidecar with --startup-profile, with real processes: on vLLM's first start no
profile exists for the key, so that start is recorded and written; the next start (cold)
replays it through /proc/<pid>/root before the weights; a library changed since the
recording is skipped and counted. Samples and metrics say which profile, how many bytes,
how many stale entries."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.evict import evict
from controller.profile.replay import RECORD_SUFFIX
from controller.profile.schema import (
    RECORDER_REVISION,
    ProfileKey,
    load,
    outdated_reason,
    save,
)
from exporter.models import ModelSpec
from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.engine import libtree
from tests.engine.run import engine_pattern, evict_tree, start_engine
from tests.sidecar.pod import FakeVllm, Sidecar, free_port, metric_value, start_sidecar, wait_for

pytestmark = pytest.mark.slow
ENGINE_IMAGE = "registry.example/engine:1.0"


class Pod:
    """One start of the engine beside a fresh sidecar, cold."""

    def __init__(self, tree: libtree.Tree, model: Path, workdir: Path, profiles: Path) -> None:
        self.tree, self.model, self.workdir, self.profiles = tree, model, workdir, profiles
        self.started: list[tuple[Sidecar, FakeVllm]] = []

    def start(self, tag: str) -> tuple[Sidecar, FakeVllm]:
        evict_tree(self.tree.site_packages)
        evict(discover(self.model), ResidencyProbe())
        port, instance = free_port(), uuid.uuid4().hex[:10]
        workdir = self.workdir / tag
        sidecar = start_sidecar(
            self.model,
            workdir,
            "--gate",
            "none",
            "--vllm-url",
            f"http://127.0.0.1:{port}/health",
            "--vllm-process-pattern",
            engine_pattern(instance),
            "--poll-interval",
            "0.05",
            "--startup-profile",
            str(self.profiles),
            "--engine-image",
            ENGINE_IMAGE,
        )
        sidecar.probe_startup()
        engine = start_engine(
            self.model,
            workdir,
            self.tree.site_packages,
            "--init-seconds",
            "0.2",
            port=port,
            instance=instance,
        )
        self.started.append((sidecar, engine))
        engine.wait_ready(120)
        return sidecar, engine

    def stop(self) -> None:
        for sidecar, engine in self.started:
            engine.stop()
            assert sidecar.terminate() == 0


@pytest.fixture
def pod(tree: libtree.Tree, engine_model: Path, shared_tmp: Path) -> Iterator[Pod]:
    profiles = shared_tmp / "profiles"
    profiles.mkdir()
    started = Pod(tree, engine_model, shared_tmp, profiles)
    try:
        yield started
    finally:
        for sidecar, engine in started.started:
            engine.stop()
            if sidecar.process.poll() is None:
                sidecar.process.kill()
                sidecar.process.wait(30)


def _phase(sidecar: Sidecar, *phases: str) -> dict[str, object]:
    def settled() -> dict[str, object] | None:
        document = dict(sidecar.status()["startup_profile"])
        return document if document["phase"] in phases else None

    return wait_for(settled, 60, f"the start-up profile {phases}")


def test_recorded_on_the_first_start_then_replayed(pod: Pod, tree: libtree.Tree) -> None:
    key = ProfileKey(engine=ENGINE_IMAGE, model=ModelSpec(pod.model, None).label)
    path = pod.profiles / key.file_name()

    first, _ = pod.start("first")
    [load_sample] = first.wait_samples("load", 1)
    assert load_sample["startup_profile"] == key.name
    assert load_sample["startup_profile_phase"] == "recording"
    recorded = _phase(first, "recorded")
    assert recorded["path"] == str(path)
    profile = load(path)
    assert profile.key == key
    site = str(tree.site_packages)
    assert sum(1 for e in profile.entries if e.path.startswith(site)) >= len(tree.modules)
    assert recorded["recorded_entries"] == profile.totals.entries
    # The engine read every distribution's RECORD (packages_distributions()): the replay
    # looks up the paths they list (headers nobody reads included).
    records = [e.path for e in profile.entries if e.path.endswith(RECORD_SUFFIX)]
    packages = len(tree.import_order) + len(tree.unused)
    assert sum(1 for r in records if r.startswith(site)) >= packages - 1, records
    listed = {r: len(Path(r).read_text().splitlines()) for r in records}
    # All that the tree's RECORDs list exists; others' (the virtual environment's) may not.
    found_at_least = sum(n for r, n in listed.items() if r.startswith(site))

    second, _ = pod.start("second")
    [load_sample] = second.wait_samples("load", 1)
    replayed = _phase(second, "replayed")
    result = replayed["result"]
    assert isinstance(result, dict)
    assert load_sample["startup_profile_phase"] == "replayed"
    assert load_sample["startup_profile_read_bytes"] == result["read_bytes"]
    # Every range was read or found resident (the engine, starting beside the replay, reads
    # some of them first: how much the replay itself reads is the benchmark's business).
    covered = result["read_bytes"] + result["resident_bytes"]
    assert covered >= 0.9 * result["planned_bytes"]
    assert load_sample["startup_profile_stale_entries"] == 0
    assert result["replayed_entries"] == profile.totals.entries
    assert found_at_least <= result["looked_up_paths"] <= sum(listed.values())
    metrics = second.metrics()
    assert (
        metric_value(
            metrics, "pagewarm_sidecar_startup_profile_info", profile=key.name, phase="replayed"
        )
        == 1.0
    )
    assert (
        metric_value(metrics, "pagewarm_sidecar_startup_profile_read_bytes") == result["read_bytes"]
    )
    assert metric_value(metrics, "pagewarm_sidecar_startup_profile_entries", state="stale") == 0.0
    # The exporter's view of the same samples.
    assert metric_value(metrics, "pagewarm_startup_profile_replays_total", model=key.model) == 1.0

    # An image update changed a library: its entry is stale, skipped and counted.
    changed = tree.site_packages / tree.shared_objects[0]
    with changed.open("r+b") as handle:
        handle.write(b"\x7fELF")
    third, _ = pod.start("third")
    [load_sample] = third.wait_samples("load", 1)
    result = _phase(third, "replayed")["result"]
    assert isinstance(result, dict)
    assert result["stale_entries"] == 1
    assert load_sample["startup_profile_stale_entries"] == 1
    assert any(str(changed) in problem for problem in result["problems"])
    assert (
        metric_value(third.metrics(), "pagewarm_sidecar_startup_profile_entries", state="stale")
        == 1.0
    )

    # A profile an older pagewarm recorded (recorder revision 1, which missed files): this
    # start records a complete one in its place instead of replaying it.
    old = load(path)
    older = old.recording.model_copy(update={"recorder": 1})
    save(old.model_copy(update={"recording": older}), path)
    assert outdated_reason(load(path)) is not None
    fourth, _ = pod.start("fourth")
    [load_sample] = fourth.wait_samples("load", 1)
    assert load_sample["startup_profile_phase"] == "recording"
    _phase(fourth, "recorded")
    assert load(path).recording.recorder == RECORDER_REVISION
    pod.stop()
