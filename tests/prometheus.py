"""A real Prometheus and a real exporter process, for tests that check what Prometheus sees.

    from tests.prometheus import running_exporter, running_prometheus

    with running_exporter("--model-path", model) as exporter, \\
         running_prometheus([exporter.target], scrape_interval=1.0) as prom:
        prom.wait_for_targets_up()
        ratio = prom.wait_for_value('pagewarm_model_resident_ratio{model="m"}', lambda v: v > 0.99)
        prom.query("sum by (device) (pagewarm_io_scheduler_info)")  # the API's result vector

``running_prometheus`` writes a config (scrape jobs for the targets, optional rule files),
starts the ``prometheus`` binary on a free loopback port with its own TSDB directory, waits
until it is ready and stops it afterwards. It skips locally when the binary is missing and
fails in CI (``require_binary``). ``running_exporter`` starts ``pagewarm exporter`` through
the real CLI on a free port (``--port 0``, the port read back from its "serving" log line).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import REPO, require_binary

START_TIMEOUT_SECONDS = 60.0


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


@dataclass
class PrometheusHandle:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    directory: Path
    log_path: Path

    def api(self, endpoint: str, **params: str) -> Any:
        """GET /api/v1/<endpoint>; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        document = _get_json(f"{self.url}/api/v1/{endpoint}?{query}")
        if document.get("status") != "success":
            raise AssertionError(f"Prometheus API {endpoint} {params}: {document}")
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: the result vector ({"metric": labels, "value": [t, "v"]})."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def values(self, expr: str) -> dict[frozenset[tuple[str, str]], float]:
        """Each series' labels (as a frozenset of pairs) -> its value."""
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in self.query(expr)}

    def value(self, expr: str) -> float | None:
        """The value of a query that selects one series; None when it selects none."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{expr} selects {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``predicate(result)`` holds; the result then."""
        deadline = time.monotonic() + timeout
        result = self.query(expr)
        while not predicate(result):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting on {expr}: {result}")
            time.sleep(0.2)
            result = self.query(expr)
        return result

    def wait_for_value(
        self, expr: str, predicate: Callable[[float], bool], timeout: float = 30.0
    ) -> float:
        """Poll a one-series ``expr`` until ``predicate(value)`` holds; the value then."""

        def holds(result: list[dict[str, Any]]) -> bool:
            return len(result) == 1 and predicate(float(result[0]["value"][1]))

        return float(self.wait_for(expr, holds, timeout)[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every target scraped successfully at least once."""
        deadline = time.monotonic() + timeout
        targets = self.targets()
        while not targets or any(t["health"] != "up" for t in targets):
            if time.monotonic() > deadline:
                raise AssertionError(f"targets not up after {timeout} s: {targets}")
            time.sleep(0.2)
            targets = self.targets()
        return targets

    def rules(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def prometheus_config(
    targets: Sequence[str],
    scrape_interval: float,
    rule_files: Sequence[Path] = (),
    evaluation_interval: float | None = None,
    job: str = "pagewarm",
    *,
    static_configs: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``static_configs`` (each ``{"targets": [...], "labels": {...}}``) replace the plain
    list of ``targets`` where given: a fleet's agents, each with its ``node`` label."""
    static = list(static_configs) if static_configs is not None else [{"targets": list(targets)}]
    return {
        "global": {
            "scrape_interval": _duration(scrape_interval),
            "scrape_timeout": _duration(scrape_interval),
            "evaluation_interval": _duration(evaluation_interval or scrape_interval),
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": static}],
    }


@contextmanager
def running_prometheus(
    targets: Sequence[str],
    scrape_interval: float = 1.0,
    *,
    rule_files: Sequence[Path] = (),
    evaluation_interval: float | None = None,
    job: str = "pagewarm",
    static_configs: Sequence[dict[str, Any]] | None = None,
) -> Iterator[PrometheusHandle]:
    """A real Prometheus scraping ``targets`` ("host:port") every ``scrape_interval`` s."""
    binary = require_binary("prometheus")
    with tempfile.TemporaryDirectory(prefix="pagewarm-prometheus-") as tmp:
        directory = Path(tmp)
        config = directory / "prometheus.yml"  # JSON is YAML
        config.write_text(
            json.dumps(
                prometheus_config(
                    targets,
                    scrape_interval,
                    rule_files,
                    evaluation_interval,
                    job,
                    static_configs=static_configs,
                )
            )
        )
        port = free_port()
        log_path = directory / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        handle = PrometheusHandle(f"http://127.0.0.1:{port}", process, directory, log_path)
        try:
            _wait_ready(handle)
            yield handle
        finally:
            _stop(process)


def _wait_ready(handle: PrometheusHandle) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise AssertionError(f"prometheus exited {handle.process.returncode}:\n{handle.log()}")
        try:
            with urllib.request.urlopen(f"{handle.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"prometheus not ready after {START_TIMEOUT_SECONDS} s:\n{handle.log()}")


def _stop(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class ExporterHandle:
    process: subprocess.Popen[str]
    port: int
    logs: list[dict[str, Any]] = field(default_factory=list)  # its JSON log lines so far

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get(self, path: str = "/metrics", headers: dict[str, str] | None = None) -> str:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(response.read().decode())

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in list(self.logs) if line.get("event") == name]


@contextmanager
def running_exporter(
    *args: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    user: int | None = None,
) -> Iterator[ExporterHandle]:
    """``pagewarm exporter --host 127.0.0.1 --port 0 *args`` in a new process (optionally as
    another uid), stopped with SIGTERM afterwards."""
    with running_server("exporter", *args, env=env, user=user) as handle:
        yield handle


@contextmanager
def running_server(
    command: str,
    *args: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    user: int | None = None,
    prefix: Sequence[str] = (),
) -> Iterator[ExporterHandle]:
    """``pagewarm COMMAND --host 127.0.0.1 --port 0 *args`` (a command that serves, like the
    exporter or the node agent) in a new process, started through ``prefix`` (``sh -c
    'join a cgroup; exec "$@"' sh``) where given, stopped with SIGTERM afterwards."""
    argv = [*prefix, sys.executable, "-m", "controller.cli", command, "--host", "127.0.0.1"]
    argv += ["--port", "0", *map(str, args)]
    if user is not None:
        setpriv = require_binary("setpriv")
        argv = [setpriv, f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    full_env = {**os.environ, "PAGEWARM_LOG_FORMAT": "json", **(env or {})}
    process = subprocess.Popen(
        argv, env=full_env, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    logs: list[dict[str, Any]] = []
    listening = threading.Event()
    reader = threading.Thread(target=_read_logs, args=(process, logs, listening), daemon=True)
    reader.start()
    try:
        if not listening.wait(START_TIMEOUT_SECONDS) or not any(
            line.get("event") == "serving" for line in logs
        ):
            exit_status = process.poll()
            raise AssertionError(f"pagewarm {command} did not start (exit {exit_status}): {logs}")
        port = next(int(line["port"]) for line in logs if line.get("event") == "serving")
        yield ExporterHandle(process, port, logs)
    finally:
        _stop(process)
        reader.join(10)
        if process.stderr is not None:
            process.stderr.close()


def _read_logs(
    process: subprocess.Popen[str], logs: list[dict[str, Any]], listening: threading.Event
) -> None:
    assert process.stderr is not None
    for raw in process.stderr:
        try:
            line = json.loads(raw)
        except ValueError:
            line = {"event": "unparsed", "text": raw.rstrip("\n")}
        logs.append(line)
        if line.get("event") == "serving":
            listening.set()
    listening.set()  # the process ended: the waiter looks at the logs
