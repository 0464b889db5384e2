"""The exporter as users run it: the real CLI in its own process. Settings from the
environment, clear errors for bad input, untrusted residency as an unprivileged user, and
a graceful stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.requestlog import MALFORMED_LOG_INTERVAL_SECONDS
from tests.exporter.test_server import MALFORMED_REQUESTS
from tests.prometheus import running_exporter
from tests.support import NOBODY_UID, REPO, require_root, write_random

KiB = 1 << 10


MODEL_VARIABLES = (
    "MODEL_PATH",
    "PAGEWARM_MODEL_PATH",
    "PAGEWARM_MODEL_PATHS",
    "PAGEWARM_MODELS_DIR",
)


def _env_without_models() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in MODEL_VARIABLES}


def _cli(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI with no model in the environment (pagewarm() keeps the caller's)."""
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *map(str, args)],
        env={**_env_without_models(), "PAGEWARM_LOG_FORMAT": "json", **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sigterm_stops_the_exporter_gracefully(tmp_path: Path) -> None:
    write_random(tmp_path / "m" / "model.safetensors", 64 * KiB)
    with running_exporter("--model-path", tmp_path / "m") as exporter:
        assert "pagewarm_model_files" in exporter.get("/metrics")
        idle = socket.create_connection(("127.0.0.1", exporter.port))  # a keep-alive client
        try:
            exporter.process.send_signal(signal.SIGTERM)
            assert exporter.process.wait(timeout=30) == 0
        finally:
            idle.close()
    assert exporter.events("signal received")[0]["signal"] == "SIGTERM"
    assert exporter.events("stopped")


def test_models_from_the_environment(tmp_path: Path) -> None:
    write_random(tmp_path / "a" / "model.safetensors", 64 * KiB)
    write_random(tmp_path / "b" / "model.safetensors", 64 * KiB)
    hub = tmp_path / "hub"
    snapshot = hub / "models--org--tiny" / "snapshots" / "rev"
    write_random(snapshot / "model.safetensors", 64 * KiB)
    env = {
        **_env_without_models(),
        "PAGEWARM_MODEL_PATHS": f"{tmp_path / 'a'},{tmp_path / 'b'}",
        "PAGEWARM_MODELS_DIR": str(hub),
    }
    with running_exporter(env=env) as exporter:
        text = exporter.get("/metrics")
    for name in ("a", "b", "org/tiny"):
        assert f'pagewarm_model_present{{model="{name}"}} 1.0' in text


def test_per_file_series_from_the_flag_the_environment_or_the_models_shape(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    for name in ("a", "b"):
        write_random(models / name / "model.safetensors", 64 * KiB)
    env = {**_env_without_models(), "PAGEWARM_PER_FILE_SERIES": "auto"}
    runs = {
        "directory, auto": (["--models-dir", models], env, False),
        "directory, flag": (["--models-dir", models, "--per-file-series"], env, True),
        "one model, auto": (["--model-path", models / "a"], env, True),
        "one model, flag": (["--model-path", models / "a", "--no-per-file-series"], env, False),
        "one model, environment": (
            ["--model-path", models / "a"],
            {**env, "PAGEWARM_PER_FILE_SERIES": "false"},
            False,
        ),
        "environment, flag wins": (
            ["--models-dir", models, "--per-file-series"],
            {**env, "PAGEWARM_PER_FILE_SERIES": "false"},
            True,
        ),
    }
    for case, (args, run_env, per_file) in runs.items():
        with running_exporter(*args, env=run_env) as exporter:
            text = exporter.get("/metrics")
        assert 'pagewarm_model_size_bytes{model="a"}' in text, case
        assert (
            'pagewarm_file_size_bytes{file="model.safetensors",model="a"}' in text
        ) is per_file, case

    bad = _cli("exporter", "--models-dir", models, env={"PAGEWARM_PER_FILE_SERIES": "sometimes"})
    assert bad.returncode == 2
    assert "PAGEWARM_PER_FILE_SERIES='sometimes'" in bad.stderr


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    nothing = _cli("exporter")
    assert nothing.returncode == 2
    assert "no models to watch" in nothing.stderr

    two = _cli("exporter", "--model-path", tmp_path, "--model-path", "/other", "--model-name", "x")
    assert two.returncode == 2
    assert "--model-name names one model" in two.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _cli("exporter", "--model-path", tmp_path, "--host", "127.0.0.1", "--port", port)
    assert busy.returncode == 1
    assert "cannot listen" in busy.stderr
    assert "address already in use" in busy.stderr.lower()


@pytest.mark.root
def test_unprivileged_exporter_reports_residency_as_untrusted(shared_tmp: Path) -> None:
    require_root("to run the exporter as user nobody over files root owns")
    model = shared_tmp / "model"
    write_random(model / "model-00001-of-00002.safetensors", 256 * KiB)
    write_random(model / "model-00002-of-00002.safetensors", 256 * KiB)
    for path in (model, *model.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (model / "model-00001-of-00002.safetensors").read_bytes()  # resident, for real
    samples = shared_tmp / "samples.jsonl"
    with running_exporter(
        "--model-path", model, "--model-name", "m", "--samples", samples, user=NOBODY_UID
    ) as exporter:
        text = exporter.get("/metrics")
    assert 'pagewarm_model_residency_trusted{model="m"} 0.0' in text
    assert 'pagewarm_model_size_bytes{model="m"} 524288.0' in text
    assert "pagewarm_model_resident_bytes{" not in text
    assert "pagewarm_model_resident_ratio{" not in text
    assert "pagewarm_file_resident_bytes{" not in text
    assert 'pagewarm_file_size_bytes{file="model-00001-of-00002.safetensors",model="m"}' in text
    assert 'pagewarm_collector_success{collector="residency"} 1.0' in text


def test_the_exporter_command_loads_no_other_command() -> None:
    """The exporter's memory is its own: other commands' modules (and what they import)
    stay out of its process."""
    code = (
        "import sys; from controller.cli import build_parser; "
        "build_parser(['--log-format', 'json', 'exporter', '--port', '0']); "
        "print(' '.join(m for m in sys.modules if m.startswith('controller.commands.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert set(result.stdout.split()) == {
        "controller.commands.common",
        "controller.commands.exporter",
        "controller.commands.flags",
    }


def _status_of(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.split(b" ", 2)[1]


def test_malformed_requests_cost_one_short_warning_not_a_traceback_each(tmp_path: Path) -> None:
    write_random(tmp_path / "m" / "model.safetensors", 64 * KiB)
    with running_exporter("--model-path", tmp_path / "m") as exporter:
        started = time.monotonic()
        for _ in range(10):
            for request in MALFORMED_REQUESTS:
                assert _status_of(exporter.port, request) == b"400", request[:30]
        elapsed = time.monotonic() - started
        assert "pagewarm_model_files" in exporter.get("/metrics")  # and it still serves
    after = exporter.logs[[line.get("event") for line in exporter.logs].index("serving") + 1 :]
    assert [line for line in after if line.get("level") not in ("info", "warning")] == []
    warnings = exporter.events("malformed request refused")
    assert 1 <= len(warnings) <= 1 + elapsed // MALFORMED_LOG_INTERVAL_SECONDS
    assert all(len(json.dumps(line)) < 400 for line in warnings)
    # 60 bad requests: 1.9 KB of ERROR and traceback each before; the whole log now.
    assert sum(len(json.dumps(line)) for line in after) < 2000
