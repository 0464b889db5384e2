"""What the exporter costs at node scale, next to the floor: the bare syscalls it cannot avoid.

For each size (10, 100 and 1,000 models of 10 sparse 1 GiB shards: a node's models
directory, made with truncate, so it takes no disk), the real exporter is started through
the CLI (``pagewarm exporter --models-dir``) and scraped the way Prometheus does
(OpenMetrics, gzip), every 1.2 s, so that every scrape misses the 1 s collection cache and
pays for a whole collection. Some pages of every model are read into the page cache
first, so residency is not trivially zero.

Printed per size: the exporter's CPU per scrape (its threads' schedstat), the scrape's
median latency, RSS, series and body; the CPU of the first scrape (which scans every
model's tree: the cost after a node's models all changed); and the floor: stat + open +
cachestat + close of the same files from Python, one thread, the arguments built once,
timed alone in this process (not while the exporter runs), before and after the
exporter's scrapes, median of several passes. The ratio CPU per scrape / floor is the
figure to watch: a regression shows as a ratio, whatever the machine.

Then, at one size, rounds of 50 concurrent scrapes: single flight must make a round cost
about one collection.

Targets (issue 16), checked at the end: at 1,000 models CPU per scrape at most 2.5x the
floor, RSS at most 80 MiB, at most 15 series per model; at 100 models at most 30 ms CPU
per scrape.

    .venv/bin/python bench/exporter_bench.py [--dir /var/tmp] [--models 10 100 1000]
    .venv/bin/python bench/exporter_bench.py --repo /tmp/main-checkout   # another tree

``--repo`` runs the exporter of another checkout (main, for a before/after table) with
this bench; ``--exporter-arg=--per-file-series`` passes flags through.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
GiB = 1 << 30
# What Prometheus 2.x sends.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
SCRAPE_INTERVAL_SECONDS = 1.2  # just over the exporter's 1 s collection cache
# A new tree is scanned once more this long after its first scan (exporter.weightset_cache);
# the measured scrapes start after that, in the steady state of an unchanged node.
SETTLE_WAIT_SECONDS = 3.0
SYSCALL_CACHESTAT = 451

TARGET_RATIO_AT_1000 = 2.5
TARGET_RSS_MIB_AT_1000 = 80.0
TARGET_SERIES_PER_MODEL = 15.0
TARGET_CPU_MS_AT_100 = 30.0
TARGET_CONCURRENT_COST = 3.0

_SAMPLE_LINE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? ")


# --- the tree ------------------------------------------------------------------------------


def make_tree(root: Path, models: int, shards: int, shard_bytes: int, cached: int) -> list[str]:
    """``models`` directories of ``shards`` sparse files each; the first ``cached`` bytes of
    every model's first shard are read into the page cache (holes read as zero pages,
    which are cached like any other). Returns every shard's path."""
    paths = []
    for m in range(models):
        model = root / f"model-{m:04d}"
        model.mkdir(parents=True)
        for s in range(1, shards + 1):
            path = model / f"model-{s:05d}-of-{shards:05d}.safetensors"
            with path.open("wb") as handle:
                handle.truncate(shard_bytes)
            paths.append(str(path))
        _read(model / f"model-00001-of-{shards:05d}.safetensors", min(cached, shard_bytes))
    return paths


def _read(path: Path, length: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while offset < length:
            got = len(os.pread(fd, min(MiB, length - offset), offset))
            if not got:
                break
            offset += got
    finally:
        os.close(fd)


def drop_cached(paths: Sequence[str]) -> None:
    """Give back the zero pages this bench cached."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# --- the floor -----------------------------------------------------------------------------


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Counts(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "wb", "ev", "rev")]


def floor_pass(paths: Sequence[str]) -> tuple[float, int]:
    """stat + open + cachestat + close of every path: (CPU seconds, cached pages). As lean
    as Python gets: str paths, the syscall's arguments built once."""
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    counts = _Counts()
    args = (ctypes.byref(_Range(0, 0)), ctypes.byref(counts), 0)
    stat, open_, close, flags = os.stat, os.open, os.close, os.O_RDONLY | os.O_CLOEXEC
    cached = 0
    started = time.process_time()
    for path in paths:
        stat(path)
        fd = open_(path, flags)
        if syscall(SYSCALL_CACHESTAT, fd, *args) != 0:
            close(fd)
            raise OSError(ctypes.get_errno(), f"cachestat {path}")
        cached += counts.cache
        close(fd)
    return time.process_time() - started, cached


def floor_seconds(paths: Sequence[str], passes: int) -> list[float]:
    floor_pass(paths)  # the dentries and inodes in cache, as for the exporter's scrapes
    return [floor_pass(paths)[0] for _ in range(passes)]


# --- the exporter --------------------------------------------------------------------------


@dataclass
class Exporter:
    process: subprocess.Popen[str]
    port: int

    def cpu_seconds(self) -> float:
        """CPU seconds of all its threads, from their schedstat (nanoseconds; the 10 ms
        ticks of /proc/<pid>/stat are too coarse for a 5 ms scrape)."""
        total = 0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError):  # a thread that just ended
                continue
        return total / 1e9

    def memory_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)


@contextmanager
def running_exporter(repo: Path, models_dir: Path, extra: Sequence[str]) -> Iterator[Exporter]:
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "PAGEWARM_LOG_FORMAT": "json",
        "PAGEWARM_SAMPLES": str(models_dir.parent / "samples.jsonl"),
    }
    argv = [sys.executable, "-m", "controller.cli", "exporter", "--models-dir", str(models_dir)]
    process = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", "0", *extra],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=repo,
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


async def scrape(http: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    async with http.get(url, headers=headers) as response:
        body = await response.read()  # decompressed by the client
        if response.status != 200 or not body.endswith(b"# EOF\n"):
            raise SystemExit(f"bad scrape: {response.status} {body[-200:]!r}")
    return time.perf_counter() - started, body


@dataclass
class Measured:
    models: int
    files: int
    first_cpu_ms: float  # the first scrape: every tree scanned
    cpu_ms: list[float]  # per steady-state scrape, from its threads' schedstat
    latencies_ms: list[float]
    rss_kib: int
    hwm_kib: int
    body: bytes
    floor_ms: list[float]

    @property
    def cpu_per_scrape_ms(self) -> float:
        return statistics.fmean(self.cpu_ms)

    @property
    def floor_median_ms(self) -> float:
        return statistics.median(self.floor_ms)

    @property
    def ratio(self) -> float:
        return self.cpu_per_scrape_ms / self.floor_median_ms

    def series(self) -> tuple[int, int]:
        """(series with a model label, series without)."""
        per_model = fixed = 0
        for line in self.body.decode().splitlines():
            if not _SAMPLE_LINE.match(line):
                continue
            if 'model="' in line.split(" ", 1)[0]:
                per_model += 1
            else:
                fixed += 1
        return per_model, fixed


async def steady_scrapes(
    exporter: Exporter, scrapes: int
) -> tuple[float, list[float], list[float], bytes]:
    """The first scrape's CPU, then ``scrapes`` scrapes SCRAPE_INTERVAL_SECONDS apart:
    (first CPU ms, CPU ms per scrape, latencies ms, last body)."""
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    async with aiohttp.ClientSession() as http:
        before = exporter.cpu_seconds()
        await scrape(http, url)
        first = 1000 * (exporter.cpu_seconds() - before)
        await asyncio.sleep(SETTLE_WAIT_SECONDS)
        await scrape(http, url)  # the settling scan of every tree (weightset_cache)
        await asyncio.sleep(SCRAPE_INTERVAL_SECONDS)
        cpu: list[float] = []
        latencies: list[float] = []
        body = b""
        for _ in range(scrapes):
            before = exporter.cpu_seconds()
            seconds, body = await scrape(http, url)
            # The collection runs off the loop; the response is sent when it is done.
            cpu.append(1000 * (exporter.cpu_seconds() - before))
            latencies.append(1000 * seconds)
            await asyncio.sleep(SCRAPE_INTERVAL_SECONDS)
    return first, cpu, latencies, body


async def concurrent_rounds(exporter: Exporter, scrapers: int, rounds: int) -> float:
    """CPU ms per round of ``scrapers`` concurrent scrapes, rounds SCRAPE_INTERVAL_SECONDS
    apart (each round needs one new collection)."""
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(scrape(http, url) for _ in range(scrapers)))  # connections
        await asyncio.sleep(SCRAPE_INTERVAL_SECONDS)
        spent = 0.0
        for _ in range(rounds):
            before = exporter.cpu_seconds()
            await asyncio.gather(*(scrape(http, url) for _ in range(scrapers)))
            spent += exporter.cpu_seconds() - before
            await asyncio.sleep(SCRAPE_INTERVAL_SECONDS)
    return 1000 * spent / rounds


# --- the report ----------------------------------------------------------------------------


def print_table(rows: list[Measured]) -> None:
    header = (
        "| models (files) | CPU per scrape | floor | ratio | scrape median | first scrape CPU "
        "| RSS (peak) | series (per model + fixed) | body |"
    )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for r in rows:
        per_model, fixed = r.series()
        print(
            f"| {r.models:,} ({r.files:,}) | {r.cpu_per_scrape_ms:.1f} ms "
            f"| {r.floor_median_ms:.1f} ms | {r.ratio:.2f}x "
            f"| {statistics.median(r.latencies_ms):.1f} ms | {r.first_cpu_ms:.0f} ms "
            f"| {r.rss_kib / 1024:.1f} MiB ({r.hwm_kib / 1024:.1f}) "
            f"| {per_model + fixed:,} ({per_model / r.models:.1f}/model + {fixed}) "
            f"| {len(r.body) / 1e6:.2f} MB |"
        )


def verdicts(rows: list[Measured], concurrent: tuple[int, float, float] | None) -> list[str]:
    by_size = {r.models: r for r in rows}
    checks: list[tuple[str, bool]] = []
    if (big := by_size.get(1000)) is not None:
        per_model = big.series()[0] / big.models
        peak = big.hwm_kib / 1024
        checks += [
            (
                f"1,000 models: CPU per scrape <= {TARGET_RATIO_AT_1000}x the floor "
                f"({big.ratio:.2f}x)",
                big.ratio <= TARGET_RATIO_AT_1000,
            ),
            (
                f"1,000 models: RSS <= {TARGET_RSS_MIB_AT_1000:.0f} MiB (peak {peak:.1f})",
                peak <= TARGET_RSS_MIB_AT_1000,
            ),
            (
                f"1,000 models: series per model <= {TARGET_SERIES_PER_MODEL:.0f} "
                f"({per_model:.1f})",
                per_model <= TARGET_SERIES_PER_MODEL,
            ),
        ]
    if (mid := by_size.get(100)) is not None:
        cpu = mid.cpu_per_scrape_ms
        checks.append(
            (
                f"100 models: CPU per scrape <= {TARGET_CPU_MS_AT_100:.0f} ms ({cpu:.1f})",
                cpu <= TARGET_CPU_MS_AT_100,
            )
        )
    if concurrent is not None:
        scrapers, one, round_ms = concurrent
        cost = round_ms / one
        checks.append(
            (
                f"{scrapers} concurrent scrapers cost < {TARGET_CONCURRENT_COST:.0f}x one "
                f"scrape ({cost:.2f}x: {round_ms:.1f} ms a round)",
                cost < TARGET_CONCURRENT_COST,
            )
        )
    return [f"  {'PASS' if ok else 'MISS'}  {text}" for text, ok in checks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--models", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--shards", type=int, default=10, help="shards per model")
    parser.add_argument("--shard-gib", type=float, default=1.0, help="apparent size of a shard")
    parser.add_argument("--cached-mib", type=int, default=4, help="cached MiB per model")
    parser.add_argument("--scrapes", type=int, default=20, help="steady-state scrapes per size")
    parser.add_argument("--floor-passes", type=int, default=5, help="floor passes per side")
    parser.add_argument("--scrapers", type=int, default=50, help="concurrent scrapers")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of concurrent scrapes")
    parser.add_argument("--concurrent-at", type=int, default=100, help="models (0: skip)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the pagewarm tree to run")
    parser.add_argument("--exporter-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args()

    rows: list[Measured] = []
    concurrent = None
    with tempfile.TemporaryDirectory(prefix="pagewarm-exporter-bench-", dir=args.dir) as tmp:
        for models in args.models:
            root = Path(tmp) / f"models-{models}"
            paths = make_tree(
                root, models, args.shards, int(args.shard_gib * GiB), args.cached_mib * MiB
            )
            try:
                floor = floor_seconds(paths, args.floor_passes)
                with running_exporter(args.repo, root, args.exporter_arg) as exporter:
                    first, cpu, latencies, body = asyncio.run(
                        steady_scrapes(exporter, args.scrapes)
                    )
                    rss, hwm = exporter.memory_kib("VmRSS"), exporter.memory_kib("VmHWM")
                    if models == args.concurrent_at:
                        round_ms = asyncio.run(
                            concurrent_rounds(exporter, args.scrapers, args.rounds)
                        )
                        concurrent = (args.scrapers, statistics.fmean(cpu), round_ms)
                floor += floor_seconds(paths, args.floor_passes)
            finally:
                drop_cached(paths)
            floor_ms = [1000 * s for s in floor]
            rows.append(
                Measured(models, len(paths), first, cpu, latencies, rss, hwm, body, floor_ms)
            )
            print(f"{models} models done; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print(
        f"exporter: {args.repo} {' '.join(args.exporter_arg)}; {os.cpu_count()} CPUs; "
        f"{args.shards} sparse shards of {args.shard_gib:g} GiB a model, {args.cached_mib} MiB "
        f"of each model cached; {args.scrapes} scrapes {SCRAPE_INTERVAL_SECONDS} s apart; "
        f"floor: stat+open+cachestat+close, median of {2 * args.floor_passes} passes\n"
    )
    print_table(rows)
    print("\ntargets:")
    print("\n".join(verdicts(rows, concurrent)))


if __name__ == "__main__":
    main()
