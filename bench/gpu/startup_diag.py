"""Where a cold start spends its time: the realistic engine's start-up with a timeline of
the disk, the weights' residency and the engine's own main thread, in the scenarios that
separate the causes (issue 15's all-cold target).

    python3 bench/gpu/startup_diag.py MODEL --profile P [--framework transformers]
        [--device cuda] [--drop-caches] [--scenarios a,b,...] --out diag.json

Scenarios (each one run; the engine is traced with tests/engine/engine.py --trace):

- ``warm``: everything resident, the engine alone (the baseline);
- ``weights_cold``: the weights evicted, the engine alone; the order in which the loader
  touched the weights is sampled (blocks of BLOCK_BYTES, first time each turned resident);
- ``weights_cold_stream``: the same beside the sidecar warming the weights at full speed
  from the engine's spawn (what a weight stream costs imports that read nothing);
- ``all_cold``: everything cold, the engine alone;
- ``all_cold_replayed``: everything cold, the profile replayed *before* the spawn (io
  depth 16, not timed into the start): how close to warm the imports get when the profile
  is resident, and what the disk still reads while they run (what the profile misses);
- ``all_cold_profile``: everything cold, the sidecar replaying the profile (as shipped).
- ``all_cold_staged``: everything cold, a staged warm run from here (no sidecar): the
  profile at io depth 2, then the weights at io depth 2 (1 MiB reads, no readahead)
  while the engine imports, then, once the engine maps its weights, the rest at full
  speed (8 threads, 8 MiB reads) in file order;
- ``all_cold_staged_natural``: the same, the weights in the order transformers loads them
  (tensors sorted by their names' natural order across all shards);
- ``warm_profile``: everything resident, the sidecar replaying the profile (what an idle
  sidecar costs the imports).

A staged scenario takes the small step as a suffix: ``all_cold_staged_natural@256KiB``
reads the weights 256 KiB at a time while the engine imports (1 MiB without one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controller.linux.pagecache import read_through
from controller.profile.replay import replay
from controller.profile.schema import load
from controller.safetensors_header import read_header
from controller.units import parse_size
from exporter.linux.files import FileRoot
from exporter.linux.procfiles import ProcessAccessError, uses_any
from exporter.residency import ResidencyProbe
from exporter.weightset import WeightSet, discover
from tests.engine import libtree
from tests.engine.procedure import Startup
from tests.sidecar.pod import FakeVllm

SAMPLE_SECONDS = 0.1
BLOCK_BYTES = 128 << 20
SECTOR = 512
LOW_DEPTH, LOW_STEP = 2, 1 << 20
FULL_DEPTH, FULL_STEP = 8, 8 << 20
SCENARIOS = (
    "warm",
    "weights_cold",
    "weights_cold_stream",
    "all_cold",
    "all_cold_replayed",
    "all_cold_profile",
    "all_cold_staged",
    "all_cold_staged_natural",
    "warm_profile",
)


def disk_stat(model: Path) -> Path:
    dev = model.stat().st_dev
    stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")
    if not stat.exists():
        raise SystemExit(f"{model} is on no block device ({stat} missing)")
    return stat


class Timeline:
    """Every SAMPLE_SECONDS: the disk's reads, the weights' residency; per block, the first
    time it was at least half resident (the loader's order, on a cold start)."""

    def __init__(self, weight_set: WeightSet, stat: Path) -> None:
        self.files = list(weight_set.weight_files)
        self.stat = stat
        self.probe = ResidencyProbe()
        self.fds = [os.open(f.path, os.O_RDONLY | os.O_CLOEXEC) for f in self.files]
        self.samples: list[dict[str, Any]] = []
        self.blocks: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.began = 0.0

    def start(self) -> None:
        self.began = time.monotonic()
        self.thread.start()

    def _disk(self) -> tuple[int, int, int]:
        fields = self.stat.read_text().split()
        # reads completed, sectors read, in flight
        return int(fields[0]), int(fields[2]), int(fields[8])

    def _run(self) -> None:
        while not self.stop.is_set():
            t = round(time.monotonic() - self.began, 3)
            reads, sectors, in_flight = self._disk()
            resident = 0
            for wf, fd in zip(self.files, self.fds, strict=True):
                for offset in range(0, wf.size, BLOCK_BYTES):
                    length = min(BLOCK_BYTES, wf.size - offset)
                    cached = self.probe.cached_bytes(fd, offset, length) or 0
                    resident += cached
                    key = f"{wf.path.name}@{offset // BLOCK_BYTES}"
                    if key not in self.blocks and cached * 2 >= length:
                        self.blocks[key] = t
            self.samples.append(
                {
                    "t": t,
                    "reads": reads,
                    "read_bytes": sectors * SECTOR,
                    "in_flight": in_flight,
                    "weights_resident": resident,
                }
            )
            self.stop.wait(SAMPLE_SECONDS)

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        for fd in self.fds:
            os.close(fd)
        if self.samples:
            reads, read_bytes = self.samples[0]["reads"], self.samples[0]["read_bytes"]
            for s in self.samples:
                s["reads"] -= reads
                s["read_bytes"] -= read_bytes
        order = sorted(self.blocks.items(), key=lambda kv: kv[1])
        return {"samples": self.samples, "block_order": order}


def natural_key(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]


def weight_pieces(weight_set: WeightSet, natural: bool) -> list[tuple[Path, int, int]]:
    """(file, offset, length) of every tensor: in file order, or in transformers' order."""
    pieces: list[tuple[str, Path, int, int]] = []
    for wf in weight_set.weight_files:
        header = read_header(wf.path)
        pieces.append(("", wf.path, 0, header.data_start))
        pieces.extend(
            (t.name, wf.path, header.data_start + t.begin, t.nbytes) for t in header.tensors
        )
    if natural:
        pieces.sort(key=lambda p: (p[0] != "", natural_key(p[0])))
    return [(path, offset, length) for _, path, offset, length in pieces]


class StagedWarm:
    """The staged warm, run from here: profile, weights at a small depth, then full speed."""

    def __init__(self, startup: Startup, pid: int, natural: bool, low_step: int) -> None:
        self.startup, self.pid, self.low_step = startup, pid, low_step
        self.pieces = weight_pieces(startup.weight_set, natural)
        self.files = frozenset((f.device, f.inode) for f in startup.weight_set.weight_files)
        self.loading = threading.Event()
        self.marks: dict[str, float] = {}
        self.began = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.probe = ResidencyProbe()
        self.next = 0
        self.lock = threading.Lock()

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.monotonic() - self.began, 3)

    def _watch(self) -> None:
        while not self.loading.is_set():
            try:
                if uses_any(self.pid, self.files):
                    self.mark("engine_maps_weights")
                    self.loading.set()
                    return
            except ProcessAccessError:
                return
            time.sleep(0.05)

    def _run(self) -> None:
        threading.Thread(target=self._watch, daemon=True).start()
        assert self.startup.profile is not None
        with FileRoot("/") as root:
            replay(load(self.startup.profile), root, io_depth=LOW_DEPTH)
        self.mark("profile_replayed")
        self._pass(LOW_DEPTH, self.low_step, until=self.loading)
        self.mark("low_depth_ended")
        self._pass(FULL_DEPTH, FULL_STEP, until=None)
        self.mark("weights_done")

    def _pass(self, depth: int, step: int, until: threading.Event | None) -> None:
        def worker() -> None:
            buffer = bytearray(step)
            fds: dict[Path, int] = {}
            try:
                while until is None or not until.is_set():
                    with self.lock:
                        if self.next >= len(self.work):
                            return
                        path, offset, length = self.work[self.next]
                        self.next += 1
                    fd = fds.get(path)
                    if fd is None:
                        fd = fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                    if (self.probe.cached_bytes(fd, offset, length) or 0) < length:
                        read_through(fd, offset, length, buffer)
            finally:
                for fd in fds.values():
                    os.close(fd)

        page = 4096
        self.work = [
            (path, o, min(step, offset + length - o))
            for path, offset, length in self.pieces
            for o in range(offset - offset % page, offset + length, step)
        ]
        self.next = 0
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(depth)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def disk_read_between(samples: list[dict[str, Any]], start: float, end: float) -> int:
    inside = [s["read_bytes"] for s in samples if start <= s["t"] <= end]
    return (max(inside) - min(inside)) if inside else 0


def hot_frames(trace: list[dict[str, Any]], start: float, end: float) -> list[tuple[str, int]]:
    """The main thread's innermost frames between two moments, most sampled first."""

    def where(frames: list[str]) -> str:
        own = [f for f in frames if not f.startswith("<frozen")]
        return " < ".join([frames[0], *own[:2]]) if frames else "?"

    counts = Counter(where(s["frames"]) for s in trace if start <= s["t"] < end)
    return counts.most_common(12)


def frame_span(trace: list[dict[str, Any]], function: str) -> dict[str, Any] | None:
    """When the main thread was seen inside ``function``: first and last sample, and how
    many (one every SAMPLE_SECONDS)."""
    seen = [s["t"] for s in trace if any(f":{function}" in frame for frame in s["frames"])]
    if not seen:
        return None
    return {"first_sample": min(seen), "last_sample": max(seen), "samples": len(seen)}


def run_scenario(startup: Startup, name: str, workdir: Path) -> Any:
    scenario, _, step = name.partition("@")
    low_step = parse_size(step) if step else LOW_STEP
    state = {
        "warm": "warm",
        "warm_profile": "warm",
        "weights_cold": "weights_cold",
        "weights_cold_stream": "weights_cold",
    }
    variant = {
        "weights_cold_stream": "weights",
        "all_cold_profile": "profile",
        "warm_profile": "profile",
    }.get(scenario)
    trace_path = workdir / f"{scenario}-trace.jsonl"
    timeline = Timeline(startup.weight_set, disk_stat(startup.weight_set.root))
    replayed: dict[str, Any] = {}
    staged: list[StagedWarm] = []

    def before_spawn() -> None:
        if scenario == "all_cold_replayed":
            assert startup.profile is not None
            with FileRoot("/") as root:
                replayed.update(replay(load(startup.profile), root, io_depth=16).to_dict())

    def spawned(engine: FakeVllm) -> None:
        timeline.start()  # its clock starts with the engine's (a few ms after the spawn)
        if scenario.startswith("all_cold_staged"):
            natural = scenario.endswith("natural")
            staged.append(StagedWarm(startup, engine.process.pid, natural, low_step))
            staged[0].thread.start()

    try:
        run = startup.run(
            state.get(scenario, "all_cold"),
            variant or "none",
            engine_args=("--trace", str(trace_path)),
            before_spawn=before_spawn,
            spawned=spawned,
        )
    finally:
        for warm in staged:
            warm.thread.join()
        recorded = timeline.finish()
    trace = [json.loads(line) for line in trace_path.read_text().splitlines() if line]
    trace_path.unlink()
    phases, sample, ready = run.phases, run.sample, run.seconds
    imported, loading = phases.get("imported", 0.0), phases.get("loading", 0.0)
    return {
        "scenario": name,
        "seconds": round(ready, 3),
        "phases": phases,
        "replayed_before_spawn": replayed or None,
        "staged_marks": staged[0].marks if staged else None,
        "sidecar": {
            k: sample.get(k)
            for k in (
                "prewarm_seconds",
                "startup_profile_seconds",
                "startup_profile_read_bytes",
                "startup_profile_weights_bytes",
                "prewarm_resident_ratio_before",
            )
        },
        "disk_read_during_imports": disk_read_between(recorded["samples"], 0.0, imported),
        "disk_read_during_load": disk_read_between(recorded["samples"], loading, ready),
        "hot_frames_imports": hot_frames(trace, 0.0, imported),
        "hot_frames_load": hot_frames(trace, loading, ready + 1),
        # importlib.metadata looking up every file of every RECORD (transformers' import)
        "packages_distributions": frame_span(trace, "packages_distributions"),
        "gpu_progress": [(s["t"], s["gpu_bytes"]) for s in trace if s["gpu_bytes"] is not None][
            ::5
        ],
        "timeline": recorded["samples"][::2],
        "trace": [(s["t"], s["frames"][:8]) for s in trace],
        "block_order": recorded["block_order"] if scenario == "weights_cold" else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--profile", type=Path, required=True, help="recorded when missing")
    parser.add_argument("--framework", default="transformers")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument(
        "--tree",
        type=Path,
        default=None,
        help="synthetic engine: its libraries (default: built afresh and removed at the end, "
        "so a --profile kept for later needs a kept --tree)",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for scenario in args.scenarios.split(","):
        if scenario.partition("@")[0] not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    engine_args = ["--framework", args.framework, "--device", args.device]
    workdir = Path(tempfile.mkdtemp(prefix="pagewarm-diag-", dir="/var/tmp"))
    results: list[Any] = []
    try:
        site = None
        if args.framework == "synthetic":
            tree = args.tree or workdir / "tree"  # a default tree goes with the workdir
            if not (tree / "site-packages" / libtree.MANIFEST).exists():
                libtree.build(tree, libtree.TreeShape())
            site = tree / "site-packages"
        startup = Startup(
            discover(args.model), workdir, site, tuple(engine_args), drop_caches=args.drop_caches
        )
        if args.profile.exists():
            startup.profile = args.profile
        else:
            shutil.copyfile(startup.record(), args.profile)
            startup.profile = args.profile
        for scenario in args.scenarios.split(","):
            result = run_scenario(startup, scenario, workdir)
            results.append(result)
            print(
                f"{scenario:<20} {result['seconds']:6.2f} s phases {result['phases']} "
                f"disk during imports {result['disk_read_during_imports'] / 2**20:.0f} MiB "
                f"sidecar {result['sidecar']}",
                file=sys.stderr,
                flush=True,
            )
            print(f"   imports: {result['hot_frames_imports'][:4]}", file=sys.stderr)
            print(f"   load:    {result['hot_frames_load'][:4]}", file=sys.stderr, flush=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
