"""A pod on one machine: the real sidecar process (`pagewarm sidecar`), probed the way a
kubelet probes it, and the vLLM stand-in (fake_vllm.py) started once the gate is open.

Also used by bench/sidecar_bench.py: nothing here is pytest-specific.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm.py"
# How often the simulated kubelet probes /startup (a real one: periodSeconds, >= 1 s).
PROBE_PERIOD_SECONDS = 0.05

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll until ``condition`` returns something truthy; fail with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Sidecar:
    process: subprocess.Popen[bytes]
    stderr_path: Path
    samples_path: Path
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.url(path))

    def logs(self) -> list[dict[str, Any]]:
        events = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def wait_listening(self, timeout: float = 30.0) -> None:
        def port() -> int | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"sidecar exited early:\n{self.stderr_path.read_text()}")
            for event in self.logs():
                if event.get("event") == "serving":
                    return int(event["port"])
            return None

        self.port = wait_for(port, timeout, "the sidecar to listen")

    def probe_startup(self, timeout: float = 60.0) -> list[tuple[int, dict[str, Any]]]:
        """Probe /startup like a kubelet until it answers 200; every answer, in order."""
        answers: list[tuple[int, dict[str, Any]]] = []

        def opened() -> bool:
            status, body = self.get("/startup")
            if status:
                answers.append((status, json.loads(body)))
            return status == 200

        wait_for(opened, timeout, "the gate to open", PROBE_PERIOD_SECONDS)
        return answers

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        return dict(json.loads(body))

    def metrics(self) -> str:
        code, body = self.get("/metrics")
        assert code == 200, body
        return body

    def samples(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [s for s in read_jsonl(self.samples_path) if kind is None or s["kind"] == kind]

    def wait_samples(self, kind: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            found = self.samples(kind)
            return found if len(found) >= count else None

        return wait_for(enough, timeout, f"{count} {kind} sample(s)")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_sidecar(
    model: Path,
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wrapper: Sequence[str] = (),
    wait: bool = True,
) -> Sidecar:
    """`pagewarm sidecar MODEL --port 0 ...` with JSON logs in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    stderr_path = workdir / f"sidecar-{uuid.uuid4().hex[:6]}.log"
    samples = workdir / "samples.jsonl"
    argv = [*wrapper, sys.executable, "-m", "controller.cli", "sidecar", str(model)]
    argv += ["--port", "0", "--host", "127.0.0.1", "--samples", str(samples), *args]
    full_env = {**os.environ, "PAGEWARM_LOG_FORMAT": "json", **(env or {})}
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            argv, cwd=REPO, env=full_env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
        )
    sidecar = Sidecar(process, stderr_path, samples)
    if wait:
        sidecar.wait_listening()
    return sidecar


@dataclass
class FakeVllm:
    process: subprocess.Popen[bytes]
    port: int
    events_path: Path
    log_path: Path
    instance: str
    history: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def events(self, pid: int | None = None) -> list[dict[str, Any]]:
        pid = self.process.pid if pid is None else pid
        return [e for e in read_jsonl(self.events_path) if e["pid"] == pid]

    def event(self, name: str, pid: int | None = None) -> dict[str, Any]:
        found = [e for e in self.events(pid) if e["event"] == name]
        assert found, f"fake vLLM logged no {name!r}: {self.events(pid)}"
        return found[0]

    def time_to_ready(self, pid: int | None = None) -> float:
        """From the stand-in's first instruction to its switch to 200, by its own clock."""
        start = self.event("start", pid)
        return float(self.event("ready", pid)["time"] - start["started"])

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_for(lambda: http_get(self.health_url)[0] == 200, timeout, "fake vLLM ready")

    def stop(self) -> None:
        for process in [*self.history, self.process]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(30)


# The sidecar times vLLM from its process's creation (10 ms clock ticks); the stand-in
# logs from its first Python instruction, after the interpreter started, and the sidecar
# sees the 200 at its next poll (100 ms). So the sample may exceed the stand-in's own
# figure by the interpreter's start plus a poll, and undercut it by a tick at most. Wide
# above: at load average 3+ an interpreter's start and the sidecar's next poll each take
# a good part of a second (2-core VMs shared by several test runs).
BELOW_TOLERANCE = 0.05
ABOVE_TOLERANCE = 2.0


def assert_matches_stand_in(sample: dict[str, Any], fake: FakeVllm, pid: int) -> None:
    """The sample's load time is the stand-in's own, within the tolerances above."""
    own = fake.time_to_ready(pid)
    seconds = float(sample["seconds"])
    assert own - BELOW_TOLERANCE <= seconds <= own + ABOVE_TOLERANCE, (seconds, own)


def process_pattern(instance: str) -> str:
    """A --vllm-process-pattern that finds only this test's stand-in."""
    return rf"fake_vllm\.py .*--instance {instance}(\s|$)"


def fake_vllm_argv(
    model: Path,
    port: int,
    events: Path,
    log: Path,
    instance: str,
    *args: str,
    script: Path = FAKE_VLLM,
) -> list[str]:
    """The stand-in's command line (``script``: another stand-in with the same flags)."""
    return [
        sys.executable,
        str(script),
        str(model),
        "--port",
        str(port),
        "--events",
        str(events),
        "--log-file",
        str(log),
        "--instance",
        instance,
        *args,
    ]


def start_fake_vllm(
    model: Path, workdir: Path, *args: str, port: int | None = None, instance: str | None = None
) -> FakeVllm:
    instance = instance or uuid.uuid4().hex[:10]
    port = port or free_port()
    events, log = workdir / "fake-events.jsonl", workdir / "vllm.log"
    argv = fake_vllm_argv(model, port, events, log, instance, *args)
    process = subprocess.Popen(
        argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
    )
    return FakeVllm(process, port, events, log, instance)


def restart_fake_vllm(fake: FakeVllm, model: Path, *args: str) -> None:
    """What the kubelet does when vLLM's container exits: start it again."""
    fake.history.append(fake.process)
    argv = fake_vllm_argv(model, fake.port, fake.events_path, fake.log_path, fake.instance, *args)
    fake.process = subprocess.Popen(
        argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
    )


def metric_value(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one series in a text exposition (labels must all match)."""
    for line in metrics.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return None
