"""Scrape cost of the exporter over a large model, at 1 and at 50 concurrent scrapers.

A tree of 1,000 weight files totalling 1 TiB (sparse: no disk used) with a few GiB really
in the page cache (holes read into it), a sample store with a thousand samples, and the real
exporter started through the CLI. Scrapes look like Prometheus's (OpenMetrics, gzip).

The cache is set to max-age 0 (PAGEWARM_COLLECTION_MAX_AGE_SECONDS=0), so every scrape that
does not overlap a collection in flight runs a full one: a real Prometheus scrapes every
15-60 s and always finds the cache cold, so that is the cost that counts. Only single
flight can help the 50 concurrent scrapers.

Residency peers on the same files (util-linux fincore, vmtouch) and pagewarm's own scan
in this process show what one collection's residency scan costs next to them.

    .venv/bin/python bench/exporter_bench.py [--dir /var/tmp] [--files 1000] [--total 1TiB]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.linux.pagecache import populate_read
from controller.units import format_bytes, parse_size
from exporter.residency import ResidencyProbe
from exporter.samples import Mode, Outcome, Sample, SampleKind
from exporter.weightset import discover

MiB = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# What Prometheus 2.x sends.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
TARGET_P99_MS = 50.0
TARGET_RSS_MIB = 60.0
TARGET_CONCURRENT_COST = 3.0


def make_tree(root: Path, files: int, total: int, cached: int) -> None:
    """``files`` sparse shards of total/files bytes; the first ``cached`` bytes (in load
    order) are read into the page cache (holes read as zero pages, which are cached)."""
    root.mkdir(parents=True)
    size = total // files
    for i in range(1, files + 1):
        with (root / f"model-{i:05d}-of-{files:05d}.safetensors").open("wb") as handle:
            handle.truncate(size)
    remaining = cached
    for path in sorted(root.iterdir()):
        if remaining <= 0:
            break
        length = min(remaining, size)
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset in range(0, length, 256 * MiB):
                populate_read(fd, offset, min(256 * MiB, length - offset))
        finally:
            os.close(fd)
        remaining -= length


def make_samples(store: Path, count: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    modes = [Mode.COLD, Mode.WARM, Mode.PREWARM_COLD, Mode.PREWARM_WARM]
    with store.open("w") as handle:
        for i in range(count):
            kind = SampleKind.PREWARM if i % 4 == 0 else SampleKind.LOAD
            sample = Sample(
                model=f"model-{i % 5}",
                kind=kind,
                mode=Mode.NONE if kind is SampleKind.PREWARM else modes[i % len(modes)],
                seconds=1.0 + (i % 300),
                outcome=Outcome.FAILED if i % 17 == 0 else Outcome.OK,
                bytes_read=(8 << 30) if kind is SampleKind.PREWARM else None,
                timestamp=start + timedelta(minutes=i),
            )
            handle.write(sample.to_json_line())


@dataclass
class Exporter:
    process: subprocess.Popen[str]
    port: int

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def memory_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)


@contextmanager
def running_exporter(model: Path, samples: Path) -> Iterator[Exporter]:
    env = {
        **os.environ,
        "PAGEWARM_LOG_FORMAT": "json",
        "PAGEWARM_COLLECTION_MAX_AGE_SECONDS": "0",
        "PAGEWARM_SAMPLES": str(samples),
    }
    argv = [sys.executable, "-m", "controller.cli", "exporter", "--model-path", str(model)]
    process = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert process.stderr is not None
    port = None
    for line in process.stderr:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "serving":
            port = int(event["port"])
            break
    if port is None:
        raise SystemExit(f"exporter did not start (exit {process.wait()})")
    # Keep draining its logs so that it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in process.stderr or ()], daemon=True).start()
    try:
        yield Exporter(process, port)
    finally:
        process.terminate()
        process.wait(30)


async def scrape(http: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    async with http.get(url, headers=headers) as response:
        body = await response.read()
        if response.status != 200 or not body.endswith(b"# EOF\n"):
            raise SystemExit(f"bad scrape: {response.status} {body[-200:]!r}")
    return time.perf_counter() - started


@dataclass
class Phase:
    name: str
    latencies: list[float]
    cpu_seconds: float
    units: int  # scrapes (1 scraper) or rounds (50 scrapers)
    rss_kib: int
    hwm_kib: int

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def cpu_ms_per_unit(self) -> float:
        return 1000 * self.cpu_seconds / self.units


async def run_phase(
    exporter: Exporter, name: str, scrapers: int, rounds: int, pause: float
) -> Phase:
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=True) as http:
        await asyncio.gather(*(scrape(http, url) for _ in range(scrapers)))  # connections
        cpu_before = exporter.cpu_seconds()
        for _ in range(rounds):
            latencies += await asyncio.gather(*(scrape(http, url) for _ in range(scrapers)))
            await asyncio.sleep(pause)
        cpu = exporter.cpu_seconds() - cpu_before
    return Phase(
        name, latencies, cpu, rounds, exporter.memory_kib("VmRSS"), exporter.memory_kib("VmHWM")
    )


def time_command(argv: list[str], timeout: float) -> str:
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} not installed"
    started = time.perf_counter()
    try:
        subprocess.run(argv, capture_output=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return f"> {timeout:.0f} s (stopped)"
    except subprocess.CalledProcessError as exc:
        return f"failed ({exc.returncode})"
    return f"{1000 * (time.perf_counter() - started):.0f} ms"


def residency_peers(model: Path, timeout: float) -> list[tuple[str, str]]:
    files = sorted(str(p) for p in model.iterdir())
    ws = discover(model)
    probe = ResidencyProbe()
    started = time.perf_counter()
    residency = probe.measure(ws)
    ours = time.perf_counter() - started
    fincore = time_command(["fincore", "--bytes", *files], timeout)
    vmtouch = time_command(["vmtouch", "-f", str(model)], timeout)
    return [
        (f"pagewarm scan ({probe.method}, in process)", f"{1000 * ours:.0f} ms"),
        ("fincore --bytes (util-linux, mincore)", fincore),
        ("vmtouch -f (mincore)", vmtouch),
        ("resident found by pagewarm", format_bytes(residency.cached_bytes)),
    ]


def print_report(one: Phase, many: Phase, scrapers: int, peers: list[tuple[str, str]]) -> None:
    rows = [
        ("scrapers", "1", str(scrapers), ""),
        ("scrapes", str(len(one.latencies)), str(len(many.latencies)), ""),
        ("p50 latency", f"{one.percentile_ms(0.5):.1f} ms", f"{many.percentile_ms(0.5):.1f} ms",
         f"{many.percentile_ms(0.5) / one.percentile_ms(0.5):.2f}x"),
        ("p99 latency", f"{one.percentile_ms(0.99):.1f} ms", f"{many.percentile_ms(0.99):.1f} ms",
         f"{many.percentile_ms(0.99) / one.percentile_ms(0.99):.2f}x"),
        ("exporter CPU per scrape", f"{one.cpu_ms_per_unit:.1f} ms",
         f"{1000 * many.cpu_seconds / len(many.latencies):.2f} ms", ""),
        ("exporter CPU per round (all scrapers)", f"{one.cpu_ms_per_unit:.1f} ms",
         f"{many.cpu_ms_per_unit:.1f} ms", f"{many.cpu_ms_per_unit / one.cpu_ms_per_unit:.2f}x"),
        ("exporter RSS (peak)", f"{one.rss_kib / 1024:.1f} MiB ({one.hwm_kib / 1024:.1f})",
         f"{many.rss_kib / 1024:.1f} MiB ({many.hwm_kib / 1024:.1f})", ""),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  {'1 scraper':>22}  {f'{scrapers} scrapers':>22}  {'ratio':>7}")
    for label, a, b, ratio in rows:
        print(f"{label:<{width}}  {a:>22}  {b:>22}  {ratio:>7}")
    peak_mib = max(one.hwm_kib, many.hwm_kib) / 1024
    cost = many.cpu_ms_per_unit / one.cpu_ms_per_unit
    verdicts = [
        (f"p99 at 1 scraper < {TARGET_P99_MS:.0f} ms", one.percentile_ms(0.99) < TARGET_P99_MS),
        (f"RSS < {TARGET_RSS_MIB:.0f} MiB (peak {peak_mib:.1f})", peak_mib < TARGET_RSS_MIB),
        (f"{scrapers} concurrent scrapers cost < {TARGET_CONCURRENT_COST:.0f}x one "
         f"({cost:.2f}x)", cost < TARGET_CONCURRENT_COST),
    ]  # fmt: skip
    print("\ntargets:")
    for text, ok in verdicts:
        print(f"  {'PASS' if ok else 'MISS'}  {text}")
    print("\nresidency scan of the same files, one pass:")
    for label, figure in peers:
        print(f"  {label:<44} {figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--total", type=parse_size, default=parse_size("1TiB"))
    parser.add_argument("--cached", type=parse_size, default=parse_size("4GiB"))
    parser.add_argument("--scrapes", type=int, default=300, help="sequential scrapes")
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of concurrent scrapes")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--peer-timeout", type=float, default=120.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pagewarm-exporter-bench-", dir=args.dir) as tmp:
        model, store = Path(tmp) / "model", Path(tmp) / "samples.jsonl"
        started = time.perf_counter()
        make_tree(model, args.files, args.total, args.cached)
        make_samples(store, args.samples)
        cached = ResidencyProbe().measure(discover(model)).cached_bytes
        print(
            f"tree: {args.files} files, {format_bytes(args.total)} (sparse), "
            f"{format_bytes(cached)} cached, {args.samples} samples; "
            f"built in {time.perf_counter() - started:.1f} s"
        )
        load_before = os.getloadavg()[0]
        with running_exporter(model, store) as exporter:
            one = asyncio.run(run_phase(exporter, "1", 1, args.scrapes, pause=0.0))
            many = asyncio.run(run_phase(exporter, "many", args.scrapers, args.rounds, 0.0))
        # Latency shares the machine with the load generator and whatever else runs.
        print(
            f"{os.cpu_count()} CPUs, load average {load_before:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after the scrapes"
        )
        peers = residency_peers(model, args.peer_timeout)
        # Drop the cached zero pages we made.
        for path in model.iterdir():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    print_report(one, many, args.scrapers, peers)


if __name__ == "__main__":
    main()
