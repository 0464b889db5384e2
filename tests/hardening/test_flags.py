"""Flags and settings, one path: a flag and its environment variable accept the same values
and refuse with the same words; the message names whichever the value came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import pagewarm

NO_MODEL = "/nonexistent/model"  # settings are refused before the model path is looked at

# (command line before the flag, flag, environment variable, refused value, the words)
REFUSED = [
    (
        ["prewarm", NO_MODEL],
        "--threads",
        "PAGEWARM_PREWARM_THREADS",
        "1000",
        "less than or equal to 256",
    ),
    (
        ["prewarm", NO_MODEL],
        "--threads",
        "PAGEWARM_PREWARM_THREADS",
        "0",
        "greater than or equal to 1",
    ),
    (
        ["prewarm", NO_MODEL],
        "--chunk",
        "PAGEWARM_PREWARM_CHUNK_BYTES",
        "1",
        "greater than or equal to 1048576",
    ),
    (
        ["prewarm", NO_MODEL],
        "--chunk",
        "PAGEWARM_PREWARM_CHUNK_BYTES",
        "0",
        "greater than or equal to 1048576",
    ),
    (
        ["prewarm", NO_MODEL],
        "--chunk",
        "PAGEWARM_PREWARM_CHUNK_BYTES",
        "lots",
        "not a size: 'lots'",
    ),
    (
        ["prewarm", NO_MODEL],
        "--rate-limit",
        "PAGEWARM_PREWARM_RATE_LIMIT_BYTES",
        "0",
        "greater than or equal to 1",
    ),
    (
        ["prewarm", NO_MODEL],
        "--reserve",
        "PAGEWARM_PREWARM_RESERVE_BYTES",
        "-1",
        "not a size: '-1'",
    ),
    (
        ["prewarm", NO_MODEL],
        "--strategy",
        "PAGEWARM_PREWARM_STRATEGY",
        "fast",
        "'auto', 'populate' or 'read'",
    ),
    (
        ["prewarm", NO_MODEL],
        "--io-depth",
        "PAGEWARM_STARTUP_PROFILE_IO_DEPTH",
        "0",
        "greater than or equal to 1",
    ),
    (
        ["init", NO_MODEL],
        "--threads",
        "PAGEWARM_PREWARM_THREADS",
        "257",
        "less than or equal to 256",
    ),
    (
        ["bench", NO_MODEL],
        "--prewarm-variants",
        "PAGEWARM_BENCH_PREWARM_VARIANTS",
        "read:0",
        "threads: Input should be greater than or equal to 1",
    ),
    (
        ["bench", NO_MODEL],
        "--prewarm-variants",
        "PAGEWARM_BENCH_PREWARM_VARIANTS",
        "read:1000",
        "threads: Input should be less than or equal to 256",
    ),
    (["bench", NO_MODEL], "--runs", "PAGEWARM_BENCH_RUNS", "0", "greater than or equal to 1"),
    (["measure", NO_MODEL], "--timeout", "PAGEWARM_LOAD_TIMEOUT_SECONDS", "0", "greater than 0"),
    (["measure", NO_MODEL], "--url", "PAGEWARM_LOAD_URL", "localhost:8000", "not an http(s) URL"),
    (["samples"], "--last", "PAGEWARM_SAMPLES_LAST", "-3", "greater than or equal to 0"),
    (
        ["sidecar", NO_MODEL],
        "--vllm-url",
        "PAGEWARM_VLLM_HEALTH_URL",
        "not a url",
        "not an http(s) URL",
    ),
    (
        ["sidecar", NO_MODEL],
        "--gate-timeout",
        "PAGEWARM_GATE_TIMEOUT_SECONDS",
        "0",
        "greater than 0",
    ),
    (
        ["sidecar", NO_MODEL],
        "--poll-interval",
        "PAGEWARM_HEALTH_POLL_INTERVAL_SECONDS",
        "60",
        "less than or equal to 5",
    ),
    (["sidecar", NO_MODEL], "--port", "PAGEWARM_PORT", "70000", "less than or equal to 65535"),
    (
        ["sidecar", NO_MODEL],
        "--io-depth",
        "PAGEWARM_STARTUP_PROFILE_IO_DEPTH",
        "65",
        "less than or equal to 64",
    ),
    (["exporter"], "--port", "PAGEWARM_PORT", "-1", "greater than or equal to 0"),
    (
        ["exporter"],
        "--file-series-limit",
        "PAGEWARM_FILE_SERIES_LIMIT",
        "-1",
        "greater than or equal to 0",
    ),
    (
        ["profile", "show", "p.json"],
        "--entries",
        "PAGEWARM_PROFILE_ENTRIES",
        "-1",
        "greater than or equal to 0",
    ),
    (
        ["profile", "record", "--out", "p.json"],
        "--interval",
        "PAGEWARM_PROFILE_INTERVAL_SECONDS",
        "0",
        "greater than 0",
    ),
    (
        ["profile", "record", "--out", "p.json"],
        "--ready-url",
        "PAGEWARM_PROFILE_READY_URL",
        "not a url",
        "not an http(s) URL",
    ),
]


def _refusal(result_stderr: str) -> tuple[str, str]:
    """(where the value came from, what is wrong) of the one-line refusal."""
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1, result_stderr
    source, _, words = lines[0].removeprefix("pagewarm: ").partition(": ")
    return source, words


@pytest.mark.parametrize(("command", "flag", "env", "value", "words"), REFUSED)
def test_a_flag_and_its_variable_refuse_a_value_alike(
    command: list[str], flag: str, env: str, value: str, words: str
) -> None:
    by_flag = pagewarm(*command, flag, value)
    by_env = pagewarm(*command, env={env: value})
    assert by_flag.returncode == 2, by_flag.stderr
    assert by_env.returncode == 2, by_env.stderr
    flag_source, flag_words = _refusal(by_flag.stderr)
    env_source, env_words = _refusal(by_env.stderr)
    assert flag_source == f"{flag} {value}"
    assert env_source == f"{env}={value!r}"
    assert words in flag_words
    assert flag_words == env_words


# (flag, variable, value a user writes, the setting it becomes in the JSON result)
ACCEPTED = [
    ("--chunk", "PAGEWARM_PREWARM_CHUNK_BYTES", "2MiB", ("threads", None)),
    ("--threads", "PAGEWARM_PREWARM_THREADS", "3", ("threads", 3)),
    ("--strategy", "PAGEWARM_PREWARM_STRATEGY", "read", ("strategy", "read")),
    ("--rate-limit", "PAGEWARM_PREWARM_RATE_LIMIT_BYTES", "4GiB", ("threads", None)),
]


@pytest.mark.parametrize(("flag", "env", "value", "expected"), ACCEPTED)
def test_a_flag_and_its_variable_accept_a_value_alike(
    small_model: Path, flag: str, env: str, value: str, expected: tuple[str, object]
) -> None:
    key, wanted = expected
    for result in (
        pagewarm("prewarm", small_model, "--json", flag, value),
        pagewarm("prewarm", small_model, "--json", env={env: value}),
    ):
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        if wanted is not None:
            assert document[key] == wanted


def test_a_flag_wins_over_a_refused_variable(small_model: Path) -> None:
    result = pagewarm(
        "prewarm", small_model, "--json", "--threads", "2", env={"PAGEWARM_PREWARM_THREADS": "1000"}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["threads"] == 2


def test_a_plain_pattern_in_a_list_variable_is_a_list(small_model: Path) -> None:
    result = pagewarm(
        "status", small_model, "--json", env={"PAGEWARM_WEIGHT_PATTERNS": "*.safetensors"}
    )
    assert result.returncode == 0, result.stderr
    weights = [f["file"] for f in json.loads(result.stdout)["files"] if f["role"] == "weights"]
    assert weights
    assert all(name.endswith(".safetensors") for name in weights)


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["prewarm"], "(default: $PAGEWARM_PREWARM_THREADS or 8)"),
        (["prewarm"], "(default: $PAGEWARM_PREWARM_CHUNK_BYTES or 64MiB)"),
        (["sidecar"], "(default: $PAGEWARM_GATE_TIMEOUT_SECONDS or 900.0)"),
        (["exporter"], "(default: $PAGEWARM_PORT or 9741)"),
        (["samples"], "(default: $PAGEWARM_SAMPLES_LAST or all)"),
        (["bench"], "(default: $PAGEWARM_BENCH_RUNS or 3)"),
    ],
)
def test_help_names_the_variable_and_the_default(command: list[str], shown: str) -> None:
    result = pagewarm(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert shown in " ".join(result.stdout.split())
