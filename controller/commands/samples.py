"""pagewarm samples: list the recorded load and pre-warm samples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import Field

from controller.commands import common, flags
from controller.commands.report import add_filters
from controller.report import filter_samples
from controller.units import format_ratio
from exporter.samples import Sample, SampleReader
from exporter.settings import CommonSettings

DESCRIPTION = """\
List the samples in the store ($PAGEWARM_SAMPLES, default
~/.local/state/pagewarm/samples.jsonl, or $XDG_STATE_HOME/pagewarm/samples.jsonl),
oldest first. Lines the store cannot parse (a writer killed mid-append) are counted, not
shown.

examples:
  pagewarm samples
  pagewarm samples --model llama-3-8b --since 1d
  pagewarm samples --last 20 --json
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "samples",
        help="list recorded load and pre-warm samples",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    add_filters(parser)
    parser.add_argument("--kind", choices=("load", "prewarm"), help="only this kind")
    flags.setting_flag(
        parser,
        "--last",
        settings=SamplesSettings,
        setting="samples_last",
        metavar="N",
        default="all",
        help="only the last N",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines (one per sample)")
    parser.set_defaults(func=run, settings_class=SamplesSettings)


class SamplesSettings(CommonSettings):
    samples_last: int | None = Field(default=None, ge=0, description="Only the last N.")


def run(args: argparse.Namespace, settings: SamplesSettings) -> int:
    store: Path = settings.samples
    reader = SampleReader(store)
    with common.naming(store):
        read = reader.read_new()
    samples = filter_samples(read, model=args.model, since=args.since, bench_id=args.bench)
    if args.kind:
        samples = [s for s in samples if s.kind == args.kind]
    if settings.samples_last is not None:
        samples = samples[-settings.samples_last :] if settings.samples_last else []
    if args.json:
        sys.stdout.writelines(s.to_json_line() for s in samples)
    else:
        print(render(samples))
        print(f"\n{len(samples)} samples in {store}", end="")
        print(f"; {reader.invalid_lines} unreadable lines skipped" if reader.invalid_lines else "")
    return 0


def render(samples: list[Sample]) -> str:
    header = (
        f"{'TIME (UTC)':<19}  {'KIND':<7}  {'MODEL':<20}  {'MODE':<12}  {'LOADER':<11}  "
        f"{'SECONDS':>8}  {'BEFORE':>7}  {'AFTER':>7}  {'OUTCOME':<9}  NOTE"
    )
    lines = [header]
    for s in samples:
        note = []
        if s.mode_verified is False:
            note.append(f"declared {s.declared_mode}")
        if s.kind == "prewarm":
            note.append(f"{s.strategy}:{s.threads}" + (" partial" if s.partial else ""))
        elif s.prewarm_seconds is not None:
            note.append(f"after {s.prewarm_seconds:.2f} s pre-warm ({s.strategy}:{s.threads})")
        if s.error:
            note.append(s.error)
        lines.append(
            f"{s.timestamp.strftime('%Y-%m-%d %H:%M:%S'):<19}  {s.kind:<7}  "
            f"{s.model[:20]:<20}  {s.mode:<12}  {s.loader[:11]:<11}  {s.seconds:>8.3f}  "
            f"{format_ratio(s.resident_ratio_before):>7}  "
            f"{format_ratio(s.resident_ratio_after):>7}  {s.outcome:<9}  {'; '.join(note)}"
        )
    return "\n".join(lines)
