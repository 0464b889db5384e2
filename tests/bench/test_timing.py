"""Timing by URL and by command, against real processes and a real HTTP server."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from controller.timing import time_command, time_url
from exporter.samples import Outcome, read_all
from tests.sidecar.pod import wait_for
from tests.support import pagewarm

# A server that answers 503 until READY_AFTER seconds after its start, then 200: like
# vLLM's /health while the engine initialises. It writes its start time for the test.
SERVER = """
import http.server, sys, time
port, ready_after, stamp = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
started = time.monotonic()
open(stamp, "w").write(repr(time.time()))

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = time.monotonic() - started >= ready_after
        self.send_response(200 if ok else 503)
        self.end_headers()
    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


# A timeout that the processes of a test must outlast, not a measurement.
TIMEOUT_SECONDS = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(port: int, ready_after: float, stamp: Path) -> list[str]:
    return [sys.executable, "-c", SERVER, str(port), str(ready_after), str(stamp)]


def _gone(pid_file: Path) -> bool:
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_url_timed_from_the_start_of_the_command_until_200(tmp_path: Path) -> None:
    port = _free_port()
    before = time.time()
    timing = time_url(
        f"http://127.0.0.1:{port}/health",
        _server(port, 0.5, tmp_path / "stamp"),
        timeout=60,
    )
    assert timing.outcome is Outcome.OK, timing.error
    started = float((tmp_path / "stamp").read_text())
    # The clock started before the server did and ran at least until it was ready.
    assert before <= started
    assert timing.seconds >= 0.5


def test_url_from_now_against_a_running_server(tmp_path: Path) -> None:
    import subprocess  # noqa: PLC0415

    port = _free_port()
    server = subprocess.Popen(_server(port, 0.0, tmp_path / "stamp"))
    try:
        timing = time_url(f"http://127.0.0.1:{port}/", timeout=60)
    finally:
        server.kill()
        server.wait()
    assert timing.outcome is Outcome.OK


def test_url_that_never_answers_200_times_out_and_the_command_is_stopped(
    tmp_path: Path,
) -> None:
    port = _free_port()
    # Wide: the server must be up (answering 503) before the timeout, and on a loaded
    # machine an interpreter's start alone can take a second or two.
    timing = time_url(
        f"http://127.0.0.1:{port}/health",
        _server(port, 3600, tmp_path / "stamp"),
        timeout=TIMEOUT_SECONDS,
    )
    assert timing.outcome is Outcome.TIMED_OUT
    assert timing.seconds >= TIMEOUT_SECONDS
    assert "HTTP 503" in (timing.error or "")


def test_a_command_that_exits_before_the_url_answers_fails(tmp_path: Path) -> None:
    port = _free_port()
    timing = time_url(
        f"http://127.0.0.1:{port}/", [sys.executable, "-c", "raise SystemExit(3)"], timeout=60
    )
    assert timing.outcome is Outcome.FAILED
    assert timing.exit_code == 3
    assert "exited with status 3" in (timing.error or "")


def test_command_to_its_exit(tmp_path: Path) -> None:
    ok = time_command([sys.executable, "-c", "import time; time.sleep(0.2)"], timeout=60)
    assert ok.outcome is Outcome.OK
    assert ok.seconds >= 0.2
    failed = time_command([sys.executable, "-c", "raise SystemExit(4)"], timeout=60)
    assert (failed.outcome, failed.exit_code) == (Outcome.FAILED, 4)


def test_command_past_its_timeout_is_stopped_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(3600)\n"
    )
    # Wide: two interpreters start before the child's pid is written.
    timing = time_command([sys.executable, "-c", script], timeout=TIMEOUT_SECONDS)
    assert timing.outcome is Outcome.TIMED_OUT
    assert pid_file.exists(), f"the command did not start its child in {TIMEOUT_SECONDS} s"
    # The whole process group, not just the command: SIGKILLed, the child still needs a
    # moment to exit (a busy machine), so wait for it, with a generous deadline.
    wait_for(lambda: _gone(pid_file), 10, "the command's child to be killed")


def test_measure_cli_with_url_and_command_records_a_sample(
    small_model: Path, tmp_path: Path
) -> None:
    port = _free_port()
    store = tmp_path / "samples.jsonl"
    result = pagewarm(
        "measure",
        small_model,
        "--mode",
        "warm",
        "--url",
        f"http://127.0.0.1:{port}/health",
        "--json",
        "--",
        *_server(port, 0.3, tmp_path / "stamp"),
        env={"PAGEWARM_SAMPLES": str(store)},
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    (sample,) = read_all(store)
    assert printed["id"] == sample.id
    assert sample.loader == "url"
    assert sample.outcome is Outcome.OK
    assert sample.seconds >= 0.3
    assert sample.target is not None
    assert sample.target.startswith(f"http://127.0.0.1:{port}/health from ")
    assert sample.resident_ratio_before is not None


def test_measure_cli_command_timeout_is_recorded_as_timed_out(
    small_model: Path, tmp_path: Path
) -> None:
    store = tmp_path / "samples.jsonl"
    result = pagewarm(
        "measure",
        small_model,
        "--mode",
        "warm",
        "--timeout",
        "0.5",
        "--",
        sys.executable,
        "-c",
        "import time; time.sleep(3600)",
        env={"PAGEWARM_SAMPLES": str(store)},
    )
    assert result.returncode == 1
    (sample,) = read_all(store)
    assert sample.outcome is Outcome.TIMED_OUT
    assert sample.loader == "command"
