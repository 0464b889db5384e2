"""A real Prometheus scraping the real exporter (started through the CLI) over a real model:
residency before and after a real pre-warm and an eviction, the scheduler series against
sysfs, load samples appended while it runs, and promtool on a real scrape."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.samples import Mode, Outcome, Sample, SampleKind
from tests.prometheus import running_exporter, running_prometheus
from tests.support import evict_path, pagewarm, require_binary

pytestmark = pytest.mark.slow

# Also the scrape timeout: wide enough that a scrape at load average 3+ is never cut off
# (a cut-off scrape marks the series stale and the next query finds none).
SCRAPE_INTERVAL = 2.0


def _append(store: Path, *samples: Sample) -> None:
    with store.open("a") as handle:
        handle.writelines(s.to_json_line() for s in samples)


def _load(seconds: float, mode: Mode = Mode.COLD, outcome: Outcome = Outcome.OK) -> Sample:
    return Sample(model="small", seconds=seconds, mode=mode, outcome=outcome)


def _disks_of(path: Path) -> set[str]:
    """The whole disks under ``path``, found here independently of exporter.linux.blockdev:
    st_dev -> /sys/dev/block/M:m -> a partition's parent -> a dm/md device's slaves."""
    dev = path.stat().st_dev
    if os.major(dev) == 0:  # tmpfs, overlay, NFS: no block device
        return set()
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    pending, disks = [node], set()
    while pending:
        current = pending.pop()
        if (current / "partition").exists():
            current = current.parent
        slaves = sorted((current / "slaves").glob("*")) if (current / "slaves").is_dir() else []
        if slaves:
            pending.extend(s.resolve() for s in slaves)
        else:
            disks.add(current.name)
    return disks


def _sysfs_scheduler(disk: str) -> str | None:
    try:
        text = Path(f"/sys/block/{disk}/queue/scheduler").read_text()
    except OSError:
        return None
    names = text.split()
    chosen = [n.strip("[]") for n in names if n.startswith("[")]
    return chosen[0] if chosen else (names[0] if len(names) == 1 else None)


def test_prometheus_sees_residency_follow_prewarm_and_eviction(
    small_model: Path, tmp_path: Path
) -> None:
    store = tmp_path / "samples.jsonl"
    _append(store, _load(4.0), _load(70.0), _load(3.0, outcome=Outcome.FAILED))
    evict_path(small_model)
    ratio = 'pagewarm_model_resident_ratio{model="small"}'
    with (
        running_exporter(
            "--model-path", small_model, "--model-name", "small", "--samples", store
        ) as exporter,
        running_prometheus([exporter.target], scrape_interval=SCRAPE_INTERVAL) as prom,
    ):
        prom.wait_for_targets_up()
        assert prom.wait_for_value(ratio, lambda v: v < 0.01) < 0.01
        assert prom.value('pagewarm_model_residency_trusted{model="small"}') == 1.0
        size = prom.value('pagewarm_model_size_bytes{model="small"}')
        assert size == sum(f.stat().st_size for f in small_model.iterdir() if f.is_file())

        warmed = pagewarm("prewarm", small_model)
        assert warmed.returncode == 0, warmed.stderr
        assert prom.wait_for_value(ratio, lambda v: v > 0.99) > 0.99
        resident = prom.value('pagewarm_model_resident_bytes{model="small"}')
        assert resident is not None
        assert resident > 0.99 * size

        evicted = pagewarm("evict", small_model)
        assert evicted.returncode == 0, evicted.stderr
        assert prom.wait_for_value(ratio, lambda v: v < 0.01) < 0.01
        # Per-file series sum to the model's figure.
        assert prom.value('sum(pagewarm_file_size_bytes{model="small"})') == size

        # Load samples: two ok loads in the histogram, the failed one only in the counter.
        count = 'pagewarm_load_duration_seconds_count{model="small",mode="cold"}'
        assert prom.wait_for_value(count, lambda v: v == 2) == 2
        assert (
            prom.value('pagewarm_load_duration_seconds_bucket{model="small",mode="cold",le="5.0"}')
            == 1
        )
        # A configured model's other modes exist at zero before their first load, so that
        # rate() counts that first load (a pod's cold start is often its only one).
        assert prom.value('pagewarm_load_duration_seconds_count{model="small",mode="warm"}') == 0
        assert prom.value('pagewarm_loads_total{model="small",mode="cold",outcome="failed"}') == 1
        # A sample appended while the exporter runs is read incrementally.
        _append(store, _load(1.5, mode=Mode.PREWARM_COLD))
        last = 'pagewarm_last_load_duration_seconds{model="small",mode="prewarm_cold"}'
        assert prom.wait_for_value(last, lambda v: v == 1.5) == 1.5
        assert prom.value(count) == 2

        # Every collector reported success in the last scrape.
        success = prom.values("pagewarm_collector_success")
        assert success
        assert set(success.values()) == {1.0}, success


def test_scheduler_series_match_sysfs(small_model: Path) -> None:
    disks = _disks_of(small_model)
    assert disks, f"{small_model} is on no block device (the fixture puts it on one)"
    with (
        running_exporter("--model-path", small_model, "--model-name", "small") as exporter,
        running_prometheus([exporter.target], scrape_interval=SCRAPE_INTERVAL) as prom,
    ):
        prom.wait_for_targets_up()
        devices = prom.query('pagewarm_model_device_info{model="small"}')
        schedulers = prom.query("pagewarm_io_scheduler_info")
    assert {r["metric"].get("device", "") for r in devices} == disks
    expected = {(d, s) for d in disks if (s := _sysfs_scheduler(d)) is not None}
    assert expected, f"no scheduler file for {disks}"
    assert {(r["metric"]["device"], r["metric"]["scheduler"]) for r in schedulers} == expected
    assert all(r["value"][1] == "1" for r in schedulers)
    mount_types = {r["metric"]["fstype"] for r in devices}
    assert mount_types and "" not in mount_types


def test_promtool_accepts_a_real_scrape(small_model: Path, tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    store = tmp_path / "samples.jsonl"
    prewarm = Sample(
        model="small",
        kind=SampleKind.PREWARM,
        seconds=2.0,
        bytes_read=1 << 30,
        partial=True,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )
    _append(store, _load(12.0), _load(2.5, mode=Mode.WARM), prewarm)
    other = tmp_path / "models" / "other"
    shutil.copytree(small_model, other)
    with running_exporter(
        "--model-path", small_model, "--model-path", other, "--samples", store
    ) as exporter:
        scrape = exporter.get("/metrics")
    assert 'pagewarm_prewarm_runs_total{model="small",outcome="partial"} 1.0' in scrape
    assert 'pagewarm_model_files{model="other"}' in scrape
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""
