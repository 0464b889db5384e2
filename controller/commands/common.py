"""What every subcommand shares: the MODEL_PATH argument, the weight set, JSON output,
progress on a terminal (structured progress logs otherwise), errors users can act on."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import structlog

from controller.units import format_rate, parse_size
from exporter.errors import UserError
from exporter.residency import ResidencyProbe
from exporter.settings import CommonSettings, ExporterSettings
from exporter.weightset import WeightSet, discover

log = structlog.get_logger("pagewarm")

PROGRESS_LOG_INTERVAL_SECONDS = 2.0


class UsageError(UserError):
    """Bad input that the user can fix; printed without a traceback, exit status 2."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in descriptions as written; shows a default unless the help
    already says where it comes from."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def add_model_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_path",
        nargs="?",
        type=Path,
        metavar="MODEL_PATH",
        help="model directory or weight file (default: $MODEL_PATH or $PAGEWARM_MODEL_PATH)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def add_samples(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "") -> None:
    """--samples FILE: the JSONL sample store (default: the ``samples`` setting)."""
    parser.add_argument(
        "--samples",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"the JSONL sample store{what} (default: $PAGEWARM_SAMPLES or "
        "~/.local/state/pagewarm/samples.jsonl)",
    )


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


ServerSettingsT = TypeVar("ServerSettingsT", bound=ExporterSettings)
SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def apply_flags(settings: SettingsT, flags: Mapping[str, object]) -> SettingsT:
    """``settings`` with the flags that were given (not None) in place of the environment's
    values, validated by the settings model itself: its types, bounds and parsers ("30s",
    "200MiB") apply to a flag as to the variable. Keys are field names; a flag the model
    refuses is a UsageError that names it."""
    given = {name: value for name, value in flags.items() if value is not None}
    if not given:
        return settings
    try:
        return type(settings).model_validate({**settings.model_dump(), **given}, by_name=True)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{e['loc'][0]} (from its flag): {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        raise UsageError(problems) from None


def server_settings(
    args: argparse.Namespace, settings: ServerSettingsT, flags: Mapping[str, object]
) -> ServerSettingsT:
    """A server command's settings: its ``flags`` and the shared --host, --port and
    --samples win over the environment, where given (not None). The flags were checked by
    their argparse types, the port's range here (model_copy does not validate)."""
    given = {"host": args.host, "port": args.port, "samples": args.samples, **flags}
    applied = settings.model_copy(update={k: v for k, v in given.items() if v is not None})
    if not 0 <= applied.port <= 65535:
        raise UsageError(f"--port {applied.port} is not a port (0..65535)")
    return applied


def model_path(args: argparse.Namespace, settings: CommonSettings) -> Path:
    path: Path | None = args.model_path or settings.model_path
    if path is None:
        raise UsageError(
            "no model path: give MODEL_PATH as the first argument or set the MODEL_PATH "
            "environment variable"
        )
    return path


def weight_set(args: argparse.Namespace, settings: CommonSettings) -> WeightSet:
    """The weight set of the command's MODEL_PATH; ModelPathError when there is none (an
    empty one included: no command measures, warms or evicts nothing as a success)."""
    found = discover(
        model_path(args, settings),
        settings.weight_patterns,
        settings.metadata_patterns,
        cross_filesystems=settings.cross_filesystems,
    )
    for skipped in found.skipped:
        log.warning(
            "file skipped",
            path=str(skipped.path),
            reason=str(skipped.reason),
            detail=skipped.detail,
        )
    return found


def probe(settings: CommonSettings) -> ResidencyProbe:
    return ResidencyProbe(settings.residency_method)


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields ``update(done_bytes)``, callable from any thread: a progress bar on a
    terminal, a structured log line every few seconds otherwise."""
    if sys.stderr.isatty():
        with _rich_progress(description, total) as bar_update:
            yield bar_update
        return
    last = [time.monotonic()]
    started = last[0]
    lock = threading.Lock()

    def update(done: int) -> None:
        now = time.monotonic()
        with lock:
            if now - last[0] < PROGRESS_LOG_INTERVAL_SECONDS:
                return
            last[0] = now
        elapsed = now - started
        log.info(
            "progress",
            task=description,
            done_bytes=done,
            total_bytes=total,
            percent=round(100 * done / total, 1) if total else 100.0,
            rate=format_rate(done / elapsed) if elapsed else None,
        )

    yield update


@contextmanager
def _rich_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.console import Console  # noqa: PLC0415 - only terminals pay for rich
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)
