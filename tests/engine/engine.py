"""A realistic engine stand-in: a process that starts like a serving engine. It imports its
libraries from disk, maps its shared objects and touches them as a dynamic loader does,
initialises, loads the weights, and only then answers GET /health with 200 (503 before).
Its start-up time therefore depends on the page cache of its libraries as well as of its
weights, which a stand-in that sleeps through its start cannot show.

    python tests/engine/engine.py MODEL_PATH --port 8000 [--framework synthetic|transformers]
        [--device cpu|cuda] [--init-seconds S] [--events FILE] [--instance TAG]
        [--trace FILE]

- ``synthetic`` (CPU machines, CI): imports the synthetic site-packages on PYTHONPATH
  (``tests/engine/libtree.py``: its manifest says what to import and map), maps and touches
  its shared objects in a scattered order, spends --init-seconds of CPU (what CUDA init
  and graph capture cost on a GPU), then reads every tensor with pagewarm's safetensors
  loader (numpy).
- ``transformers`` (the GPU box): imports torch and transformers for real, initialises
  CUDA, and loads the model with ``from_pretrained(..., device_map=DEVICE)``.

``--events FILE`` appends one JSON object per moment (start, imported, initialised,
loading, loaded, ready) with the wall-clock time, as tests/sidecar/fake_vllm.py does.
``--trace FILE`` (benchmarks: where does a slow start spend its time?) samples the main
thread every 0.1 s: seconds since the start, its innermost frames, and on the GPU the bytes
the loader has put there so far.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the imports: they are part of a start

import argparse  # noqa: E402 - after the start time on purpose
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import mmap  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from http.server import ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.sidecar.fake_vllm import Events, Handler, Health, build_loader  # noqa: E402

GiB = 1 << 30
MANIFEST = "engine_manifest.json"


class QuietHandler(Handler):
    def handle(self) -> None:
        """A prober that gave up (its timeout) closes the connection: not an error."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()


PAGE = mmap.PAGESIZE


def find_manifest() -> dict[str, Any]:
    for entry in os.environ.get("PYTHONPATH", "").split(":"):
        candidate = Path(entry) / MANIFEST
        if entry and candidate.is_file():
            found: dict[str, Any] = json.loads(candidate.read_text())
            return found
    raise SystemExit(f"no {MANIFEST} on PYTHONPATH: put the synthetic site-packages there")


def import_libraries(manifest: dict[str, Any], pause: float = 0.0) -> int:
    """Import every package in the manifest's order (each imports its modules)."""
    total = 0
    for package in manifest["import_order"]:
        time.sleep(pause)
        module = importlib.import_module(package)
        total += sum(getattr(module, m).checksum() for m in dir(module) if m.startswith("mod_"))
    return total


def touch_shared_objects(manifest: dict[str, Any]) -> int:
    """Map each shared object and touch a fraction of its pages in a scattered order, as
    the dynamic loader and the first calls into a library do (relocations, init code)."""
    site = Path(manifest["site_packages"])
    fraction = manifest["shape"]["touched_fraction"]
    checksum = 0
    for index, relative in enumerate(manifest["shared_objects"]):
        with (site / relative).open("rb") as handle:
            header = os.pread(handle.fileno(), 64 << 10, 0)  # the ELF headers
            checksum ^= header[0]
            size = os.fstat(handle.fileno()).st_size
            mapped = mmap.mmap(handle.fileno(), size, prot=mmap.PROT_READ)
        pages = list(range(size // PAGE))
        rng = random.Random(index)  # noqa: S311 - a fixed scatter, no secret
        for page in rng.sample(pages, int(len(pages) * fraction)):
            checksum ^= mapped[page * PAGE]
        # Kept mapped, as a loaded library is (the process's maps show it).
        MAPPED.append(mapped)
    return checksum


MAPPED: list[mmap.mmap] = []


def initialise(seconds: float) -> None:
    """CPU work standing for CUDA init, KV-cache planning, graph capture."""
    deadline = time.monotonic() + seconds
    digest = b"pagewarm"
    while time.monotonic() < deadline:
        digest = hashlib.sha256(digest).digest()


def start_synthetic(args: argparse.Namespace, out: Events) -> Any:
    manifest = find_manifest()
    import_libraries(manifest, args.import_pause)
    # transformers does this on import (import_utils): every RECORD read, its files looked up.
    importlib.metadata.packages_distributions()
    touch_shared_objects(manifest)
    out.event("imported")
    loader = build_loader("safetensors", "cpu")
    initialise(args.init_seconds)
    out.event("initialised")
    from exporter.weightset import discover  # noqa: PLC0415

    out.event("loading")
    result = loader.load(discover(args.model_path))
    return {"seconds": result.seconds, "tensor_bytes": result.tensor_bytes}


def start_transformers(args: argparse.Namespace, out: Events) -> Any:
    import torch  # noqa: PLC0415 - the import is the start-up being measured
    import transformers  # noqa: PLC0415

    out.event("imported", torch=torch.__version__, transformers=transformers.__version__)
    if args.device.startswith("cuda"):
        torch.zeros(1, device=args.device)  # creates the CUDA context
        torch.cuda.synchronize()
        INITIALISED.set()
    out.event("initialised")
    out.event("loading")
    began = time.perf_counter()
    # device_map (accelerate) puts each tensor on the GPU as it is read, as vLLM does.
    placement = {"device_map": args.device} if args.device.startswith("cuda") else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model_path, dtype=torch.bfloat16, **placement
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    tensor_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    KEEP.append(model)
    return {"seconds": time.perf_counter() - began, "tensor_bytes": tensor_bytes}


KEEP: list[Any] = []
TRACE_SECONDS = 0.1
TRACE_FRAMES = 24


def trace(path: Path, stop: threading.Event) -> None:
    """Sample the main thread until ``stop``: what it runs, and the GPU's allocated bytes
    (only once CUDA is initialised: asking earlier would initialise it from here)."""
    main = threading.main_thread().ident
    with path.open("a") as out:
        while not stop.wait(TRACE_SECONDS):
            frame = sys._current_frames().get(main or 0)
            frames: list[str] = []
            while frame is not None and len(frames) < TRACE_FRAMES:
                code = frame.f_code
                frames.append(f"{Path(code.co_filename).name}:{frame.f_lineno}:{code.co_name}")
                frame = frame.f_back
            torch = sys.modules.get("torch")
            gpu = None
            if torch is not None and INITIALISED.is_set():
                gpu = int(torch.cuda.memory_allocated())
            sample = {"t": round(time.time() - STARTED, 3), "frames": frames, "gpu_bytes": gpu}
            out.write(json.dumps(sample) + "\n")
            out.flush()


INITIALISED = threading.Event()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_path", nargs="?", default=os.environ.get("MODEL_PATH"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--framework", choices=["synthetic", "transformers"], default="synthetic")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--init-seconds", type=float, default=1.0)
    parser.add_argument(
        "--import-pause",
        type=float,
        default=0.0,
        help="seconds between two packages: a test of the recorded order spreads the imports "
        "over several recording rounds with it (never in benchmarks)",
    )
    parser.add_argument("--events", type=Path, default=None)
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--trace", type=Path, default=None, help="sample the start (see above)")
    parser.add_argument("--exit-when-ready", action="store_true", help="a script, not a server")
    parser.add_argument("--instance", default="", help="a tag on the command line (tests find it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Events(args.events, args.log_file)
    out.event("start", started=STARTED)
    if not args.model_path:
        out.log("no model path (argument or MODEL_PATH)", "ERROR")
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        out.event("stopped")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    server = ThreadingHTTPServer((args.host, args.port), QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    start = start_transformers if args.framework == "transformers" else start_synthetic
    tracing = threading.Event()
    if args.trace is not None:
        threading.Thread(target=trace, args=(args.trace, tracing), daemon=True).start()
    loaded = start(args, out)
    tracing.set()
    out.event("loaded", **loaded)
    out.log(
        f"Model loading took {loaded['tensor_bytes'] / GiB:.4f} GiB and "
        f"{loaded['seconds']:.6f} seconds"
    )
    out.event("ready")
    Health.ready = True
    out.log("Application startup complete.")
    if args.exit_when_ready:
        return 0
    threading.Event().wait()  # serve until SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
