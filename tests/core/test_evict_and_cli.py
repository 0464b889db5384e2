"""Eviction of exactly one model's pages, and the CLI's behaviour on bad input."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import COMMAND_MODULES, build_parser
from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.support import REPO, pagewarm, write_random

MiB = 1 << 20


def test_evict_drops_this_model_and_nothing_else(tmp_path: Path) -> None:
    model = tmp_path / "model"
    write_random(model / "a.safetensors", 8 * MiB)
    bystander = write_random(tmp_path / "other" / "b.safetensors", 8 * MiB)
    for f in (model / "a.safetensors", bystander):
        f.read_bytes()
    result = pagewarm("evict", model, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    # Read just before, with a margin: DAMON pageout takes a few fresh pages on these VMs.
    assert doc["resident_before_bytes"] >= 0.95 * 8 * MiB
    assert doc["resident_after_bytes"] == 0
    bystander_cached = ResidencyProbe().measure(discover(bystander.parent)).cached_bytes
    assert bystander_cached is not None and bystander_cached >= 0.95 * 8 * MiB


def test_pages_mapped_by_a_running_process_are_reported_not_hidden(tmp_path: Path) -> None:
    shard = write_random(tmp_path / "a.safetensors", 4 * MiB)
    holder_code = (
        "import mmap, sys; f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, "
        "prot=mmap.PROT_READ); sum(m[i] for i in range(0, len(m), 4096)); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(shard)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        result = pagewarm("evict", tmp_path, "--json")
    finally:
        holder.communicate("")
    assert result.returncode == 0
    assert json.loads(result.stdout)["resident_after_bytes"] >= 0.95 * 4 * MiB
    assert "pages remain resident after eviction" in result.stderr


def test_every_command_teaches_by_example() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) >= {"status", "prewarm", "evict", "synth"}
    for name, sub in subparsers.choices.items():
        assert "examples:" in sub.format_help(), f"pagewarm {name} --help has no examples"
    assert "examples:" in parser.format_help()
    for module in COMMAND_MODULES:
        assert importlib.import_module(module).__doc__, f"{module} has no docstring"


def test_model_path_comes_from_the_environment(small_model: Path) -> None:
    result = pagewarm("status", "--json", env={"MODEL_PATH": str(small_model)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model_path"] == str(small_model)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "/nonexistent/model"], "does not exist"),
        (["prewarm"], "no model path"),
        (["evict", "/dev/null"], "character device"),
        (
            ["prewarm", "--threads", "0", "{model}"],
            "--threads 0: Input should be greater than or equal to 1",
        ),
        (["synth", "{tmp}/new", "--size", "lots"], "not a size"),
    ],
)
def test_bad_input_is_a_clear_error_without_a_traceback(
    argv: list[str], message: str, small_model: Path, tmp_path: Path
) -> None:
    argv = [a.format(model=small_model, tmp=tmp_path) for a in argv]
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "PAGEWARM_MODEL_PATH")}
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(20)
def test_a_fifo_as_model_path_fails_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.safetensors")
    result = pagewarm("prewarm", tmp_path / "model.safetensors", timeout=15)
    assert result.returncode == 2
    assert "FIFO" in result.stderr


def test_an_empty_model_directory_is_refused_by_prewarm(tmp_path: Path) -> None:
    result = pagewarm("prewarm", tmp_path)
    assert result.returncode == 2
    assert "no weight files" in result.stderr


def test_an_invalid_setting_in_the_environment_is_named(small_model: Path) -> None:
    result = pagewarm("prewarm", small_model, env={"PAGEWARM_PREWARM_THREADS": "many"})
    assert result.returncode == 2
    assert "PAGEWARM_PREWARM_THREADS='many'" in result.stderr
