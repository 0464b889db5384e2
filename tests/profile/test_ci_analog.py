"""The CI analog of the H200 start-up benchmark: the realistic CPU engine, its synthetic
site-packages on the same disk as its weights, started alone from a warm and from an
all-cold page cache, and beside the sidecar replaying its start-up profile from an
all-cold cache. The replay must close a share of the cold-warm gap; the figures of the
full benchmark (bench/sidecar_bench.py, more rounds, every variant) are in the issue's
closing note. Medians of five rounds, a wide margin: this machine is shared (alone the
benchmark closed 67% of the gap; the whole suite around it, 18% in one run)."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.synth import synth
from exporter.weightset import discover
from tests.engine import libtree
from tests.engine.procedure import Startup

pytestmark = pytest.mark.slow
ROUNDS = 5
# The replay closes at least this share of the gap here (the target is a half,
# measured by the benchmark; a test on a shared 2-core VM keeps a wide margin below it).
MIN_GAP_CLOSED = 0.1
MIN_GAP_SECONDS = 0.5  # a smaller gap would mean the cold state was not cold


@pytest.fixture(scope="module")
def startup() -> Iterator[Startup]:
    path = Path(tempfile.mkdtemp(prefix="pagewarm-analog-", dir="/var/tmp"))
    try:
        tree = libtree.build(path / "tree")
        synth(path / "model", 1 << 30, shards=4)
        yield Startup(
            discover(path / "model"),
            path,
            tree.site_packages,
            ("--framework", "synthetic", "--init-seconds", "1.0"),
        )
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_replay_closes_a_share_of_the_cold_start_gap(startup: Startup) -> None:
    profile = startup.record()
    assert profile.exists()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(ROUNDS):
        for state, variant in (("warm", "none"), ("all_cold", "none"), ("all_cold", "profile")):
            run = startup.run(state, variant)
            times.setdefault((state, variant), []).append(run.seconds)
            if variant == "profile":
                assert run.sample["startup_profile_phase"] == "replayed"
                sample = run.sample
                assert sample["startup_profile_read_bytes"] > 0, sample
                # The libraries were cold: until the engine opened its weights they were
                # read at the replay's small I/O depth (how much depends on how long the
                # engine took: none when it opened them before the replay ended).
                assert sample["startup_profile_weights_bytes"] is not None, sample
                # Labelled by the cache the warm found, not by what its first part read.
                assert sample["mode"] == "prewarm_cold", sample
                assert sample["prewarm_resident_ratio_before"] <= 0.05, sample
                assert sample["resident_ratio_after"] >= 0.95, sample
    warm, cold, replayed = (
        statistics.median(times[cell])
        for cell in (("warm", "none"), ("all_cold", "none"), ("all_cold", "profile"))
    )
    report = f"warm {warm:.2f} s, all cold {cold:.2f} s, all cold + replay {replayed:.2f} s"
    assert cold - warm >= MIN_GAP_SECONDS, report
    assert replayed <= cold - MIN_GAP_CLOSED * (cold - warm), report
