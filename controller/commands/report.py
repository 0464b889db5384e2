"""pagewarm report: the bench report (CSV, markdown, plot) from the sample store."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.commands import common
from controller.report import write_report
from controller.writable import check_directory
from exporter.samples import read_all
from exporter.settings import CommonSettings

DESCRIPTION = """\
Write storage_load_bench.csv (one row per sample), storage_load_bench.md (setup, load
time per mode, pre-warm vs no pre-warm with a computed conclusion, the I/O scheduler
comparison when one ran) and storage_load_bench.png into a directory.

The directory keeps every sample it has reported (storage_load_bench.jsonl): re-running,
from the same store or another, adds the new samples and loses none.

The store is $PAGEWARM_SAMPLES (default ~/.local/state/pagewarm/samples.jsonl, or
$XDG_STATE_HOME/pagewarm/samples.jsonl) unless --samples names one.

examples:
  pagewarm report --out ./out
  pagewarm report --samples /var/lib/pagewarm/samples.jsonl --out ./out --model llama-3-8b
  pagewarm report --out ./out --since 2d
  pagewarm report --out ./out --bench 3f2a9c1b7d10
"""

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def since_arg(text: str) -> datetime:
    """An ISO timestamp (UTC when it has no zone) or an age: 30m, 12h, 2d, 1w."""
    match = _AGE.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _AGE_UNITS[match.group(2)]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (an ISO timestamp like 2026-11-28T12:00 or an age: 12h, 2d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def add_filters(parser: argparse.ArgumentParser) -> None:
    common.add_samples(parser)
    parser.add_argument("--model", help="only this model's samples")
    parser.add_argument(
        "--since", type=since_arg, help="only samples since then (ISO time, or an age: 12h, 2d)"
    )
    parser.add_argument("--bench", metavar="BENCH_ID", help="only the samples of one bench run")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the bench report (CSV, markdown, plot)",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="the report directory")
    add_filters(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: CommonSettings) -> int:
    store: Path = settings.samples
    check_directory(args.out, "--out")  # before reading: one line, not a traceback at the end
    with common.naming(store):
        samples = read_all(store)
    if not samples and not (args.out / "storage_load_bench.jsonl").exists():
        raise common.UsageError(
            f"no samples in {store}: record some with `pagewarm bench` or `pagewarm measure`"
        )
    try:
        paths = write_report(
            args.out,
            samples,
            source=str(store),
            model=args.model,
            since=args.since,
            bench_id=args.bench,
        )
    except ValueError as exc:
        raise common.UsageError(str(exc)) from None
    print(f"wrote {paths.markdown}, {paths.csv}" + (f", {paths.plot}" if paths.plot else ""))
    print(f"{paths.samples} samples reported; all are kept in {paths.archive}")
    return 0
