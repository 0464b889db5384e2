"""Residency with real syscalls: cachestat and mincore agree, and neither is believed when
the kernel may lie to an unprivileged caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.linux import mincore
from exporter.residency import FileResidency, Method, ModelResidency, ResidencyProbe
from exporter.weightset import WeightSet, discover
from tests.support import NOBODY_UID, evict_path, pagewarm, require_root, write_random

MiB = 1 << 20


def _read_range(path: Path, offset: int, length: int) -> None:
    """Read exactly this range into the page cache: readahead off for this descriptor."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        while length > 0:
            got = len(os.pread(fd, min(length, MiB), offset))
            if got == 0:
                break
            length -= got
            offset += got
    finally:
        os.close(fd)


@pytest.mark.parametrize("method", ["cachestat", "mincore"])
def test_half_read_file_is_half_resident(tmp_path: Path, method: str) -> None:
    shard = write_random(tmp_path / "m.safetensors", 16 * MiB)
    evict_path(shard)
    _read_range(shard, 0, 8 * MiB)
    probe = ResidencyProbe(method)  # type: ignore[arg-type]
    residency = probe.measure(discover(tmp_path), buckets=4)
    (f,) = residency.files
    assert f.method is Method(method)
    assert f.trusted
    # What was read, with a margin (DAMON pageout takes a few fresh pages on these VMs);
    # nothing of what was not (readahead is off).
    assert f.cached_bytes is not None and 0.95 * 8 * MiB <= f.cached_bytes <= 8 * MiB
    assert all(bucket >= 0.95 for bucket in f.buckets[:2]), f.buckets
    assert f.buckets[3] == 0.0
    assert residency.ratio == pytest.approx(f.cached_bytes / (16 * MiB))  # type: ignore[operator]


def _measured_while_the_cache_holds_still(ws: WeightSet) -> tuple[ModelResidency, ...]:
    """cachestat, mincore, cachestat: the three taken while the page cache did not change
    (DAMON pageout may take pages at any moment on these VMs), so that the two methods saw
    the same pages."""
    for _ in range(20):
        before = ResidencyProbe("cachestat").measure(ws)
        by_mincore = ResidencyProbe("mincore").measure(ws)
        after = ResidencyProbe("cachestat").measure(ws)
        if [f.cached_bytes for f in before.files] == [f.cached_bytes for f in after.files]:
            return before, by_mincore
    raise AssertionError("the page cache changed during each of 20 measurements")


def test_cachestat_and_mincore_agree_page_for_page(small_model: Path) -> None:
    evict_path(small_model)
    shard = sorted(small_model.glob("*.safetensors"))[1]
    size = shard.stat().st_size
    _read_range(shard, size // 3, size // 3)
    ws = discover(small_model)
    by_cachestat, by_mincore = _measured_while_the_cache_holds_still(ws)
    assert by_cachestat.cached_bytes == by_mincore.cached_bytes
    assert [f.cached_bytes for f in by_cachestat.files] == [
        f.cached_bytes for f in by_mincore.files
    ]
    assert by_cachestat.dirty_bytes == 0
    assert by_mincore.dirty_bytes is None  # mincore does not know; never a made-up zero


def test_a_models_totals_sum_each_column_and_an_unknown_makes_a_total_unknown(
    tmp_path: Path,
) -> None:
    ws = discover(write_random(tmp_path / "m" / "a.safetensors", 4096).parent)
    (wf,) = ws.files
    files = (
        FileResidency(wf, 1000, 100, Method.CACHESTAT, 10, 1, 20_000, 300_000),
        FileResidency(wf, 2000, 200, Method.CACHESTAT, 20, 2, 40_000, 600_000),
    )
    both = ModelResidency(ws, files)
    assert (both.size_bytes, both.cached_bytes, both.dirty_bytes, both.writeback_bytes) == (
        3000,
        300,
        30,
        3,
    )
    assert (both.evicted_bytes, both.recently_evicted_bytes) == (60_000, 900_000)
    assert both.ratio == 0.1
    untrusted = ModelResidency(ws, (*files, FileResidency(wf, 500, None, unknown_reason="x")))
    assert untrusted.size_bytes == 3500
    assert untrusted.cached_bytes is None  # never a partial sum
    assert untrusted.evicted_bytes is None
    assert untrusted.unknown_reasons == ("x",)
    empty = ModelResidency(ws, ())
    # 0 of 0 bytes is not "100% resident" (issue 12): unknown.
    assert (empty.size_bytes, empty.cached_bytes, empty.ratio) == (0, 0, None)


def test_mincore_windows_cover_files_larger_than_one_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = write_random(tmp_path / "big.safetensors", 5 * MiB + 123)
    monkeypatch.setattr(mincore, "WINDOW_BYTES", 1 * MiB)
    fd = os.open(shard, os.O_RDONLY)
    try:
        vectors = mincore.resident_vectors(fd, 0, shard.stat().st_size)
    finally:
        os.close(fd)
    assert [len(v) for v in vectors] == [256, 256, 256, 256, 256, 1]
    assert all(set(v) == {1} for v in vectors)


def _status_as_nobody(model: Path, method: str) -> dict[str, object]:
    result = pagewarm(
        "status", model, "--json", user=NOBODY_UID, env={"PAGEWARM_RESIDENCY_METHOD": method}
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", ["cachestat", "mincore"])
def test_unprivileged_caller_gets_unknown_not_a_faked_100_percent(
    shared_tmp: Path, method: str
) -> None:
    require_root("the test needs a root-owned file read by user nobody")
    shard = write_random(shared_tmp / "model.safetensors", 4 * MiB)
    shard.chmod(0o644)
    evict_path(shard)
    doc = _status_as_nobody(shared_tmp, method)
    assert doc["trusted"] is False
    assert doc["resident_bytes"] is None
    assert doc["ratio"] is None
    (reason,) = doc["unknown_reasons"]  # type: ignore[misc]
    assert "CAP_FOWNER" in reason
    assert "uid 0" in reason


def test_the_kernel_really_lies_to_unprivileged_mincore(shared_tmp: Path) -> None:
    """The trap the previous test guards against: raw mincore as nobody on an evicted
    root-owned file says 100% resident (Linux 5.2+)."""
    require_root("the test needs a root-owned file read by user nobody")
    shard = write_random(shared_tmp / "model.safetensors", 4 * MiB)
    evict_path(shard)
    code = (
        "import os; from exporter.linux import mincore; "
        f"fd = os.open({str(shard)!r}, os.O_RDONLY); "
        f"print(mincore.resident_pages(fd, 0, {4 * MiB}))"
    )
    out = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY_UID}",
            f"--regid={NOBODY_UID}",
            "--clear-groups",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    ).stdout
    assert int(out) == 4 * MiB // os.sysconf("SC_PAGE_SIZE")


def test_unprivileged_owner_is_trusted(shared_tmp: Path) -> None:
    require_root("the test chowns a file to user nobody")
    shard = write_random(shared_tmp / "model.safetensors", 4 * MiB)
    os.chown(shard, NOBODY_UID, NOBODY_UID)
    evict_path(shard)
    for method in ("cachestat", "mincore"):
        doc = _status_as_nobody(shared_tmp, method)
        assert doc["trusted"] is True
        assert doc["resident_bytes"] == 0


def test_a_file_that_vanishes_is_unknown_with_the_reason(tmp_path: Path) -> None:
    write_random(tmp_path / "a.safetensors", MiB)
    gone = write_random(tmp_path / "b.safetensors", MiB)
    ws = discover(tmp_path)
    gone.unlink()
    residency = ResidencyProbe().measure(ws)
    assert residency.cached_bytes is None
    assert residency.unknown_reasons == ("vanished",)
    cached = residency.files[0].cached_bytes
    assert cached is not None and cached >= 0.95 * MiB  # just written: resident
