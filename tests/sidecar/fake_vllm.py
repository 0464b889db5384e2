"""A stand-in for vLLM where it matters to pagewarm's sidecar: a process that takes a while to
start (imports, CUDA init), then reads every tensor of the weight set from MODEL_PATH
(really: its load time depends on the page cache), logs vLLM's "Model loading took X GiB
and Y seconds" line, and only then answers GET /health with 200 (503 before).

    python tests/sidecar/fake_vllm.py MODEL_PATH --port 8000 --startup-seconds 5 \\
        [--loader safetensors|torch] [--device cpu|cuda|cuda:N] [--log-file FILE] \\
        [--events FILE] [--crash-after SECONDS] [--crash-after-ready SECONDS] \\
        [--never-healthy] [--post-load-seconds S]

Loading reuses pagewarm's safetensors loaders (controller/loaders.py): numpy by default,
torch on the CPU, or torch onto a GPU with ``--device cuda`` (the GPU box). Beyond those
and the standard library it needs nothing.

``--events FILE`` appends one JSON object per moment (start, loading, loaded, ready,
crash, stopped) with the wall-clock time and the pid: tests compare the sidecar's figures
with these. ``--crash-after`` exits abruptly (status 1) that many seconds after the start,
as a crashing engine does; ``--crash-after-ready`` that many seconds after it became ready
(an engine dying under load: on a busy machine the imports alone can outlast a window
counted from the start); a test restarts it to simulate a crash loop.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the imports: they are part of a start

import argparse  # noqa: E402 - after the start time on purpose
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any, TextIO  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controller.loaders import (  # noqa: E402
    Loader,
    LoaderError,
    TorchDeviceLoader,
    get_loader,
)
from exporter.weightset import discover  # noqa: E402

GiB = 1 << 30


class Events:
    """JSON lines for tests, and vLLM-style log lines (stdout and an optional log file)."""

    def __init__(self, events: Path | None, log_file: Path | None) -> None:
        self.events = events
        self.log_file: TextIO | None = log_file.open("a") if log_file else None
        self.lock = threading.Lock()

    def event(self, name: str, **fields: Any) -> None:
        if self.events is None:
            return
        line = json.dumps({"event": name, "time": time.time(), "pid": os.getpid(), **fields})
        with self.lock, self.events.open("a") as handle:
            handle.write(line + "\n")

    def log(self, message: str, level: str = "INFO") -> None:
        # vLLM's format: "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
        stamp = datetime.now(UTC).strftime("%m-%d %H:%M:%S")
        line = f"{level} {stamp} [fake_vllm.py:1] {message}\n"
        with self.lock:
            sys.stdout.write(line)
            sys.stdout.flush()
            if self.log_file is not None:
                self.log_file.write(line)
                self.log_file.flush()


class Health:
    ready = False


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/health":
            self.send_error(404)
            return
        status = 200 if Health.ready else 503
        body = b"" if Health.ready else b"engine not ready\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the API's name
        """Quiet: a poll every 100 ms would drown the log."""


def build_loader(name: str, device: str) -> Loader:
    """The loader, its imports done and (on a GPU) a CUDA context made: part of the
    startup, as vLLM imports torch and initialises CUDA before it reads any weight."""
    if not device.startswith("cuda"):
        loader = get_loader(name)
        loader.check()
        return loader
    target = device if ":" in device else "cuda:0"
    gpu_loader = TorchDeviceLoader(target)
    gpu_loader.check()
    import torch  # noqa: PLC0415 - only on the GPU box

    if not torch.cuda.is_available():
        raise LoaderError("--device cuda: no CUDA GPU is visible here")
    torch.zeros(1, device=target)  # creates the CUDA context
    return gpu_loader


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_path", nargs="?", default=os.environ.get("MODEL_PATH"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--startup-seconds",
        type=float,
        default=1.0,
        help="from the process start until it reads weights (imports, CUDA init included)",
    )
    parser.add_argument("--post-load-seconds", type=float, default=0.0, help="KV cache, graphs")
    parser.add_argument("--loader", default="safetensors", choices=["safetensors", "torch"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--events", type=Path, default=None)
    parser.add_argument("--crash-after", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--crash-after-ready", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--never-healthy", action="store_true", help="load, but never answer 200")
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

    def crash() -> None:
        out.event("crash")
        out.log("engine core died unexpectedly (simulated)", "ERROR")
        os._exit(1)

    def crash_in(seconds: float) -> None:
        timer = threading.Timer(max(0.0, seconds), crash)
        timer.daemon = True
        timer.start()

    if args.crash_after is not None:
        crash_in(STARTED + args.crash_after - time.time())
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out.log(f"fake vLLM starting (pid {os.getpid()}), /health on {args.host}:{args.port}")
    try:
        loader = build_loader(args.loader, args.device)
        out.event("initialised")
        # The rest of the startup (compile, KV-cache planning...): S seconds in all.
        time.sleep(max(0.0, STARTED + args.startup_seconds - time.time()))
        weight_set = discover(args.model_path)
        out.event("loading")
        result = loader.load(weight_set)
    except (LoaderError, OSError, ValueError) as exc:
        out.log(f"model loading failed: {exc}", "ERROR")
        out.event("failed", error=str(exc))
        return 1
    out.event("loaded", seconds=result.seconds, tensor_bytes=result.tensor_bytes)
    out.log(
        f"Model loading took {result.tensor_bytes / GiB:.4f} GiB and {result.seconds:.6f} seconds"
    )
    time.sleep(args.post_load_seconds)
    if not args.never_healthy:
        out.event("ready")  # first: the sidecar cannot see the 200 before this time
        Health.ready = True
        out.log("Application startup complete.")
        if args.crash_after_ready is not None:
            crash_in(args.crash_after_ready)
    threading.Event().wait()  # serve until SIGTERM (or the crash timer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
