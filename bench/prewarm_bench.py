"""Pre-warm and residency-scan throughput of pagewarm against its peers, side by side.

Every pre-warm peer starts from the same cold files (this model's pages evicted and the
eviction verified), then the page cache is measured again: a peer only counts if the model
ended up resident. fio with O_DIRECT bypasses the page cache and gives the device's limit.

    .venv/bin/python bench/prewarm_bench.py [MODEL_DIR] [--size 4GiB] [--runs 3]

Needs vmtouch, fio and fincore (`make tools`); a missing peer is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.evict import evict
from controller.prewarm import PrewarmOptions, Strategy, prewarm
from controller.synth import synth
from controller.units import parse_size
from exporter.residency import ResidencyProbe
from exporter.weightset import WeightSet, discover

GiB = 1 << 30
MiB = 1 << 20


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    resident_after: float | None


@dataclass
class PeerResult:
    name: str
    runs: list[Run]
    note: str = ""

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(r.cpu_seconds for r in self.runs)

    @property
    def resident_after(self) -> float | None:
        values = [r.resident_after for r in self.runs if r.resident_after is not None]
        return min(values) if values else None


def _cpu_now() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _cold(ws: WeightSet, probe: ResidencyProbe) -> None:
    result = evict(ws, probe)
    left = result.after.ratio
    if left is None or left > 0.01:
        raise SystemExit(f"eviction did not take: {left} still resident")


def _timed(action: Callable[[], None], ws: WeightSet, probe: ResidencyProbe) -> Run:
    _cold(ws, probe)
    cpu = _cpu_now()
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    return Run(seconds, _cpu_now() - cpu, probe.measure(ws).ratio)


def _files(ws: WeightSet) -> list[str]:
    return [str(f.path) for f in ws.files]


def _vllm_style_prefetch(ws: WeightSet) -> None:
    """vLLM's --safetensors-load-strategy prefetch: 8 threads reading 16 MiB blocks."""
    blocks = [(f.path, off) for f in ws.files for off in range(0, f.size, 16 * MiB)]

    def read(item: tuple[Path, int]) -> None:
        path, offset = item
        with path.open("rb", buffering=0) as handle:
            handle.seek(offset)
            handle.read(16 * MiB)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(read, blocks))


def _fio_direct(ws: WeightSet) -> float:
    """Device read bandwidth with O_DIRECT (bytes/s), one job per weight file."""
    jobs = []
    for n, f in enumerate(ws.weight_files):
        jobs += [f"--name=f{n}", f"--filename={f.path}", f"--size={f.size // MiB * MiB}"]
    argv = ["fio", "--rw=read", "--direct=1", "--bs=16M", "--ioengine=psync", "--group_reporting"]
    out = subprocess.run(
        [*argv, "--output-format=json", *jobs], capture_output=True, text=True, check=True
    )
    return float(json.loads(out.stdout)["jobs"][0]["read"]["bw_bytes"])


def prewarm_peers(ws: WeightSet, runs: int) -> tuple[list[PeerResult], float | None]:
    probe = ResidencyProbe()
    files = _files(ws)
    peers: list[tuple[str, Callable[[], None], str | None]] = [
        ("pagewarm populate x1", lambda: _pagewarm(ws, Strategy.POPULATE, 1), None),
        ("pagewarm populate x4", lambda: _pagewarm(ws, Strategy.POPULATE, 4), None),
        ("pagewarm populate x8", lambda: _pagewarm(ws, Strategy.POPULATE, 8), None),
        ("pagewarm read x8", lambda: _pagewarm(ws, Strategy.READ, 8), None),
        ("pagewarm auto (default)", lambda: _pagewarm(ws, Strategy.AUTO, None), None),
        ("vmtouch -t", lambda: _run(["vmtouch", "-tq", *files]), "vmtouch"),
        ("cat > /dev/null", lambda: _run(["cat", *files]), "cat"),
        ("vLLM-style prefetch 8x16MiB", lambda: _vllm_style_prefetch(ws), None),
    ]
    results = [
        PeerResult(
            name, [], note=f"{binary} not installed" if binary and not shutil.which(binary) else ""
        )
        for name, _action, binary in peers
    ]
    # Interleave rounds so drift (host load, DAMON) does not favour one peer.
    for _ in range(runs):
        for (_name, action, _binary), result in zip(peers, results, strict=True):
            if not result.note:
                result.runs.append(_timed(action, ws, probe))
    fio = None
    if shutil.which("fio"):
        _cold(ws, probe)
        fio = statistics.median(_fio_direct(ws) for _ in range(runs))
    return results, fio


def _pagewarm(ws: WeightSet, strategy: Strategy, threads: int | None) -> None:
    options = (
        PrewarmOptions(strategy=strategy)
        if threads is None
        else PrewarmOptions(strategy=strategy, threads=threads)
    )
    result = prewarm(ws, options)
    if result.partial or result.file_errors:
        raise SystemExit(f"pre-warm incomplete: {result.partial_reason} {result.file_errors}")


def _run(argv: list[str]) -> None:
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)


def scan_peers(ws: WeightSet, runs: int) -> list[tuple[str, float, str]]:
    """(peer, median seconds of one residency scan, how it was timed)."""
    files = _files(ws)
    out = []
    for method in ("cachestat", "mincore"):
        probe = ResidencyProbe(method)  # type: ignore[arg-type]
        times = [probe.measure(ws).scan_seconds for _ in range(max(runs, 5))]
        out.append((f"pagewarm {method}", statistics.median(times), "in process"))
    if shutil.which("vmtouch"):
        times = []
        for _ in range(max(runs, 5)):
            text = subprocess.run(
                ["vmtouch", *files], capture_output=True, text=True, check=True
            ).stdout
            match = re.search(r"Elapsed:\s*([0-9.]+)", text)
            if match:
                times.append(float(match.group(1)))
        if times:
            out.append(("vmtouch", statistics.median(times), "its own 'Elapsed'"))
    if shutil.which("fincore"):
        times = []
        for _ in range(max(runs, 5)):
            started = time.perf_counter()
            subprocess.run(["fincore", *files], capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        out.append(("fincore", statistics.median(times), "whole process, start included"))
    return out


def _print_prewarm(results: list[PeerResult], fio: float | None, size: int) -> None:
    best_peer = max(
        (size / r.seconds for r in results if r.runs and not r.name.startswith("pagewarm")),
        default=None,
    )
    vmtouch = next((r for r in results if r.name == "vmtouch -t" and r.runs), None)
    print(f"\npre-warm of {size / GiB:.2f} GiB from cold (median of runs)")
    columns = ("GiB/s", "CPU s/GiB", "resident", "vs fio", "vs best peer")
    print(f"{'peer':<30} " + " ".join(f"{c:>{max(7, len(c))}}" for c in columns))
    if fio:
        print(f"{'fio O_DIRECT (device limit)':<30} {fio / GiB:>7.2f} {'-':>9} {'-':>8} {1:>7.2f}")
    for r in results:
        if not r.runs:
            print(f"{r.name:<30} {r.note}")
            continue
        rate = size / r.seconds
        cpu = r.cpu_seconds / (size / GiB)
        resident = "-" if r.resident_after is None else f"{r.resident_after:.3f}"
        vs_fio = f"{rate / fio:.2f}" if fio else "-"
        vs_peer = f"{rate / best_peer:.2f}" if best_peer else "-"
        print(
            f"{r.name:<30} {rate / GiB:>7.2f} {cpu:>10.3f} {resident:>9} {vs_fio:>7} {vs_peer:>13}"
        )
    if vmtouch:
        print(f"(vmtouch CPU s/GiB: {vmtouch.cpu_seconds / (size / GiB):.3f})")


def _print_scan(scans: list[tuple[str, float, str]], size: int) -> None:
    print(f"\nresidency scan of {size / GiB:.2f} GiB (median)")
    vmtouch = next((s for n, s, _ in scans if n == "vmtouch"), None)
    print(f"{'peer':<20} {'ms':>9} {'vmtouch/this':>13}  timed as")
    for name, seconds, how in scans:
        ratio = f"{vmtouch / seconds:.1f}x" if vmtouch else "-"
        print(f"{name:<20} {seconds * 1000:>9.3f} {ratio:>13}  {how}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model", nargs="?", type=Path, help="a model directory (default: synthesised)"
    )
    parser.add_argument("--size", default="4GiB", help="size of the synthesised model")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workdir = None
    model = args.model
    if model is None:
        workdir = Path(tempfile.mkdtemp(prefix="pagewarm-bench-", dir="/var/tmp"))
        model = workdir / "model"
        made = synth(model, parse_size(args.size), shards=4)
        print(f"synthesised {made.total_bytes / GiB:.2f} GiB in {made.seconds:.1f} s at {model}")
    try:
        ws = discover(model)
        size = ws.total_bytes
        results, fio = prewarm_peers(ws, args.runs)
        scans = scan_peers(ws, args.runs)
        _print_prewarm(results, fio, size)
        _print_scan(scans, size)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
