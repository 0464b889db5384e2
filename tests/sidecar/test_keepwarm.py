"""Keep-warm and mlock with real evictions (posix_fadvise DONTNEED) while the sidecar runs.

Residency is never asserted as exactly 1.0: these VMs run a DAMON pageout scheme that takes
page cache without memory pressure (keep-warm puts it back). Where a test counts what
keep-warm brought back, it holds the rest of the model in memory (mlock) so that only what
the test evicted can go missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.sidecar.conftest import Processes
from tests.sidecar.pod import Sidecar, metric_value, start_sidecar, wait_for
from tests.support import evict_path, held_in_memory, require_binary, require_root

MiB = 1 << 20


def evict_range(path: Path, offset: int, length: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_ratio(path: Path, offset: int = 0, length: int | None = None) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        length = os.fstat(fd).st_size - offset if length is None else length
        cached = ResidencyProbe().cached_bytes(fd, offset, length)
    finally:
        os.close(fd)
    assert cached is not None
    return cached / length


def rewarmed(sidecar: Sidecar) -> float:
    return metric_value(sidecar.metrics(), "pagewarm_sidecar_rewarm_bytes_total") or 0.0


def rewarm_events(sidecar: Sidecar) -> list[dict[str, Any]]:
    return [e for e in sidecar.logs() if e["event"] == "re-warmed evicted ranges"]


def wait_rewarmed(sidecar: Sidecar, at_least: float, what: str) -> None:
    """Until keep-warm's counter reaches ``at_least``; on a timeout, what keep-warm did."""
    try:
        wait_for(lambda: rewarmed(sidecar) >= at_least, 30, what)
    except TimeoutError as exc:
        state = sidecar.status()["keep_warm"]
        recent = [e for e in sidecar.logs() if "keep" in e["event"] or "warm" in e["event"]]
        raise AssertionError(f"{exc}: keep-warm {state}; its last events {recent[-5:]}") from None


def test_keep_warm_brings_back_only_what_was_evicted(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    sidecar = processes.sidecar(
        start_sidecar(small_model, tmp_path, "--keep-warm", "--keep-warm-interval", "0.2")
    )
    sidecar.probe_startup()
    shard_a, shard_b = [f.path for f in discover(small_model).weight_files][:2]
    others = [p for p in small_model.iterdir() if p.is_file() and p not in (shard_a, shard_b)]
    size_a, size_b = shard_a.stat().st_size, shard_b.stat().st_size
    wait_for(lambda: sidecar.status()["keep_warm"]["passes"] > 0, 30, "a keep-warm pass")

    # What the test does not evict is held in memory: on these VMs DAMON pageout takes page
    # cache at any time (a whole model at once, seen), and on a shared machine another test
    # run may drop the whole page cache; keep-warm would rightly bring that back as well.

    # A 4 MiB range in the middle of one shard (two whole 2 MiB windows): that range comes
    # back, not the whole file.
    rest_of_a = [(shard_a, 0, 4 * MiB), (shard_a, 8 * MiB, size_a - 8 * MiB)]
    with held_in_memory(*others, *rest_of_a, shard_b):
        seen = len(rewarm_events(sidecar))
        before = rewarmed(sidecar)
        evict_range(shard_a, 4 * MiB, 4 * MiB)
        wait_rewarmed(sidecar, before + 4 * MiB, "the range to be re-warmed")
        assert resident_ratio(shard_a, 4 * MiB, 4 * MiB) > 0.95
        passes = rewarm_events(sidecar)[seen:]
        assert passes and all(e["missing_bytes"] <= 4 * MiB for e in passes), passes
        assert all(e["rewarmed_bytes"] == e["missing_bytes"] for e in passes), passes
        assert rewarmed(sidecar) - before < size_a

    # A whole shard.
    with held_in_memory(*others, shard_a):
        before = rewarmed(sidecar)
        evict_path(shard_b)
        wait_rewarmed(sidecar, before + 0.9 * size_b, "the shard to be re-warmed")
        assert resident_ratio(shard_b) > 0.95
    status = sidecar.status()["keep_warm"]
    assert status["enabled"] is True and status["thrashing"] is False
    assert sidecar.terminate() == 0


def test_keep_warm_stays_within_the_memory_budget(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    # A reserve larger than the machine: the budget is 0, for the warm and for keep-warm.
    env = {"PAGEWARM_PREWARM_RESERVE_BYTES": str(1 << 50)}
    evict_path(small_model)
    sidecar = processes.sidecar(
        start_sidecar(small_model, tmp_path, "--keep-warm", "--keep-warm-interval", "0.2", env=env)
    )
    status, body = sidecar.probe_startup()[-1]
    assert status == 200 and "memory budget reached" in body["gate"]["reason"]
    wait_for(lambda: sidecar.status()["keep_warm"]["passes"] >= 2, 30, "keep-warm passes")
    keep = sidecar.status()["keep_warm"]
    assert keep["rewarm_bytes_total"] == 0
    assert "memory budget reached" in keep["last_note"]
    [warm] = sidecar.samples("prewarm")
    # No budget at all is a failed warm (never a 0-byte "partial" one), with the reason.
    assert warm["outcome"] == "failed" and warm["partial"] is False
    assert "no memory budget to warm anything" in warm["error"]
    assert sidecar.terminate() == 0


def locked_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    raise AssertionError("no VmLck line")


def test_mlock_pins_the_weights(small_model: Path, tmp_path: Path, processes: Processes) -> None:
    require_root("the kernel lets root (CAP_IPC_LOCK) lock 64 MiB")
    sidecar = processes.sidecar(start_sidecar(small_model, tmp_path, "--mlock"))
    sidecar.probe_startup()
    size = discover(small_model).total_bytes
    wait_for(lambda: sidecar.status()["mlock"]["locked_bytes"] == size, 30, "the lock")
    assert locked_kib(sidecar.process.pid) * 1024 >= size
    assert metric_value(sidecar.metrics(), "pagewarm_sidecar_mlocked_bytes") == size
    # Locked pages cannot be dropped: an eviction leaves them resident.
    evict_path(small_model)
    ratio = ResidencyProbe().measure(discover(small_model)).ratio
    assert ratio is not None and ratio > 0.99
    assert sidecar.terminate() == 0
    assert any(e["event"] == "weights unlocked" for e in sidecar.logs())


def test_mlock_without_ipc_lock_says_why_and_runs_on(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    require_root("dropping CAP_IPC_LOCK from root's bounding set")
    prlimit, setpriv = require_binary("prlimit"), require_binary("setpriv")
    # As a pod without IPC_LOCK: no capability, and the usual 64 KiB memlock limit.
    wrapper = [prlimit, "--memlock=65536:65536", setpriv, "--bounding-set=-ipc_lock", "--"]
    sidecar = processes.sidecar(start_sidecar(small_model, tmp_path, "--mlock", wrapper=wrapper))
    status, _ = sidecar.probe_startup()[-1]
    assert status == 200
    wait_for(lambda: sidecar.status()["mlock"]["error"], 30, "the mlock verdict")
    mlock = sidecar.status()["mlock"]
    assert mlock["locked_bytes"] == 0
    assert (
        "lacks CAP_IPC_LOCK" in mlock["error"] and "RLIMIT_MEMLOCK is 64.00 KiB" in mlock["error"]
    )
    assert "capabilities.add: [IPC_LOCK]" in mlock["error"]
    assert locked_kib(sidecar.process.pid) == 0
    assert any(e["event"] == "weights not locked in memory" for e in sidecar.logs())
    assert sidecar.terminate() == 0


def test_keep_warm_without_a_vllm_to_time(
    small_model: Path, tmp_path: Path, processes: Processes
) -> None:
    """--vllm-url none: a sidecar that only keeps a model warm (and exports) records no
    load samples and never waits for a server that is not there."""
    sidecar = processes.sidecar(
        start_sidecar(
            small_model,
            tmp_path,
            "--vllm-url",
            "none",
            "--gate",
            "none",
            "--keep-warm",
            "--keep-warm-interval",
            "0.2",
        )
    )
    sidecar.probe_startup()
    shard = discover(small_model).weight_files[0].path
    wait_for(lambda: sidecar.status()["keep_warm"]["passes"] > 0, 30, "a keep-warm pass")
    evict_path(shard)
    wait_for(lambda: resident_ratio(shard) > 0.95, 30, "the evicted shard to come back")
    assert sidecar.terminate() == 0
    kinds = {s["kind"] for s in sidecar.samples()}
    assert "load" not in kinds
