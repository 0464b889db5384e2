"""cli.main: every user error is one line and exit status 2, every I/O failure one line and
exit status 1; a traceback only with --debug or PAGEWARM_LOG_LEVEL=debug."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support import pagewarm


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A sample store with one valid sample (a report has something to write)."""
    path = tmp_path / "samples.jsonl"
    sample = {
        "schema": 1,
        "kind": "load",
        "timestamp": "2026-12-01T12:00:00+00:00",
        "source": "measure",
        "model": "tiny",
        "model_path": "/models/tiny",
        "mode": "cold",
        "loader": "safetensors",
        "seconds": 1.5,
        "outcome": "ok",
        "size_bytes": 1 << 20,
        "files": 1,
    }
    path.write_text(json.dumps(sample) + "\n")
    return path


# (argv, environment, exit status, words in the one line); {tmp} and {store} filled in.
CASES = [
    # Settings from the environment: one line naming the variable.
    (
        ["status", "{tmp}"],
        {"PAGEWARM_WEIGHT_PATTERNS": '["*.safetensors"'},
        2,
        "PAGEWARM_WEIGHT_PATTERNS=",
    ),
    (
        ["status", "{tmp}"],
        {"PAGEWARM_RESIDENCY_METHOD": "guess"},
        2,
        "PAGEWARM_RESIDENCY_METHOD='guess'",
    ),
    (
        ["status", "{tmp}"],
        {"PAGEWARM_CROSS_FILESYSTEMS": "maybe"},
        2,
        "PAGEWARM_CROSS_FILESYSTEMS='maybe'",
    ),
    (
        ["exporter", "--model-path", "{tmp}"],
        {"PAGEWARM_MODEL_PATHS": "[1,"},
        2,
        "PAGEWARM_MODEL_PATHS=",
    ),
    (["sidecar", "{tmp}"], {"PAGEWARM_VLLM_HEALTH_URL": "not a url"}, 2, "not an http(s) URL"),
    # Output paths that are a file, or where nothing can be written: refused before any
    # work, one line, exit status 2.
    (
        ["report", "--samples", "{store}", "--out", "/etc/passwd"],
        {},
        2,
        "--out /etc/passwd: exists and is not a directory",
    ),
    (
        ["report", "--samples", "{store}", "--out", "/proc/self/pagewarm"],
        {},
        2,
        "--out /proc/self/pagewarm: ",
    ),
    (
        ["bench", "{tmp}", "--out", "/etc/passwd"],
        {},
        2,
        "--out /etc/passwd: exists and is not a directory",
    ),
    (
        ["profile", "record", "--model-name", "m", "--out", "/proc/self/p.json", "--", "true"],
        {},
        2,
        "--out /proc/self/p.json: /proc/self is",
    ),
    (
        ["profile", "record", "--model-name", "m", "--out", "{tmp}", "--", "true"],
        {},
        2,
        "is a directory",
    ),
    # A sample store that is a directory or unreadable: one line, exit status 1 (I/O).
    (["report", "--samples", "{tmp}", "--out", "{tmp}/out"], {}, 1, "is not a regular file"),
    (["samples", "--samples", "{tmp}"], {}, 1, "is not a regular file"),
    (["samples", "--samples", "/proc/self/mem"], {}, 1, "/proc/self/mem: Input/output error"),
    (["samples"], {"PAGEWARM_SAMPLES": "{tmp}"}, 1, "is not a regular file"),
    (["profile", "show", "{tmp}"], {}, 2, "Is a directory"),
    (["exporter", "--models-dir", "{store}", "--port", "0"], {}, 2, "is not a directory"),
    (["exporter", "--port", "0"], {"PAGEWARM_MODELS_DIR": "{store}"}, 2, "is not a directory"),
]


def _fill(text: str, tmp: Path, store: Path) -> str:
    return text.format(tmp=tmp, store=store)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_an_error_is_one_line_and_its_exit_status(
    tmp_path: Path, store: Path, case: tuple[list[str], dict[str, str], int, str]
) -> None:
    argv, env, status, words = case
    result = pagewarm(
        *(_fill(a, tmp_path, store) for a in argv),
        env={k: _fill(v, tmp_path, store) for k, v in env.items()},
    )
    assert result.returncode == status, result.stderr
    line = one_line(result.stderr)
    assert words in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flag", "env"), [(["--debug"], {}), ([], {"PAGEWARM_LOG_LEVEL": "debug"})]
)
def test_debug_shows_the_traceback(flag: list[str], env: dict[str, str]) -> None:
    result = pagewarm(
        *flag,
        "samples",
        "--samples",
        "/proc/self/mem",
        env={"PAGEWARM_LOG_FORMAT": "console", **env},
    )
    assert result.returncode == 1, result.stderr
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)  # the console renderer's colours
    assert "Traceback" in text
    assert "OSError: [Errno 5] Input/output error" in text
