"""pagewarm bench: cold, warm and pre-warmed loads, N runs each, interleaved."""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import structlog

from controller.bench import (
    DEFAULT_MODES,
    SCHEDULER_MODES,
    Bench,
    BenchConfig,
    BenchError,
    Variant,
)
from controller.commands import common
from controller.commands.measure import add_load_options, build_measurer, show_unsaved
from controller.commands.prewarm import add_prewarm_options, options_from
from controller.measure import UnsavedSampleError
from controller.prewarm import resolve_strategy
from controller.report import headline, write_report
from controller.scheduler import SchedulerError, TerminatedError
from controller.settings import BenchSettings
from controller.writable import check_directory
from exporter.samples import Mode

log = structlog.get_logger("pagewarm")

DESCRIPTION = """\
Run the cold/warm load procedure end to end and record every load (and every pre-warm)
in the sample store ($PAGEWARM_SAMPLES, default ~/.local/state/pagewarm/samples.jsonl).

Modes, each --runs times, in a seeded random order within each round so that drift
cannot favour one mode:
  cold          this model's pages evicted (per file, no root needed)
  warm          loaded right after a load
  prewarm_cold  evicted, pre-warmed (recorded separately), loaded
  prewarm_warm  pre-warmed while already warm (its cost when not needed), loaded
Every cold run checks that residency really was ~0 before the load and says so otherwise.

--schedulers none,mq-deadline runs cold and warm loads under each I/O scheduler of the
model's disk: only with this flag, only where the scheduler file is writable (root), and
the original scheduler is always restored (also on Ctrl-C and SIGTERM; after a crash,
`pagewarm scheduler restore`). Without permission it runs under the current scheduler and
says what it would have tested.

--prewarm-variants compares pre-warm strategies in one bench (prewarm_* modes run once per
variant per round); the report shows each.

examples:
  pagewarm bench /models/llama-3-8b --runs 5 --out ./out
  pagewarm bench /models/llama-3-8b --loader torch-cuda --runs 5 \\
      --prewarm-variants populate:1,populate:8,read:8 --out ./out
  pagewarm bench /models/llama-3-8b --schedulers none,mq-deadline --runs 3
  pagewarm bench /models/llama-3-8b --modes cold,warm --seed 7
  pagewarm bench /models/llama-3-8b --url http://127.0.0.1:8000/health \\
      -- vllm serve /models/llama-3-8b
"""


def _modes(text: str) -> tuple[Mode, ...]:
    try:
        modes = tuple(Mode(m.strip()) for m in text.split(",") if m.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a list of modes: {text!r} (from {', '.join(DEFAULT_MODES)})"
        ) from None
    if not modes or any(m not in DEFAULT_MODES for m in modes):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(DEFAULT_MODES)}")
    return tuple(dict.fromkeys(modes))


def _names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="cold/warm/pre-warmed load bench, recorded as samples",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(parser)
    parser.add_argument("--runs", type=int, default=3, help="runs per mode")
    parser.add_argument(
        "--modes",
        type=_modes,
        default=None,
        help="comma-separated (default: all four; cold,warm with --schedulers)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="order of the runs (default: random, logged)"
    )
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="also drop the WHOLE host's page cache before cold runs (root; affects "
        "everything else on the host)",
    )
    parser.add_argument(
        "--schedulers",
        type=_names,
        default=(),
        help="I/O schedulers to compare, e.g. none,mq-deadline (switches and restores)",
    )
    parser.add_argument(
        "--prewarm-variants",
        type=_names,
        default=None,
        metavar="STRATEGY:THREADS,...",
        help="pre-warm configurations to compare, e.g. populate:1,read:8 "
        "(default: the one --strategy/--threads give)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write the report into this directory"
    )
    add_load_options(parser)
    add_prewarm_options(parser)
    parser.set_defaults(func=run, settings_class=BenchSettings, takes_command=True)


def _config(args: argparse.Namespace, settings: BenchSettings) -> BenchConfig:
    if args.runs < 1:
        raise common.UsageError("--runs must be at least 1")
    options, guard = options_from(args, settings)
    try:
        variants = tuple(Variant.parse(v) for v in args.prewarm_variants or ())
    except BenchError as exc:
        raise common.UsageError(str(exc)) from None
    if not variants:
        variants = (Variant(resolve_strategy(options.strategy), options.threads),)
    variants = tuple(Variant(resolve_strategy(v.strategy), v.threads) for v in variants)
    if args.drop_caches:
        if os.geteuid() != 0:
            raise common.UsageError("--drop-caches needs root (it writes /proc/sys/vm/drop_caches)")
        log.warning(
            "--drop-caches: the whole host's page cache is dropped before every cold run; "
            "everything else on this host will read from disk again"
        )
    default_modes = SCHEDULER_MODES if args.schedulers else DEFAULT_MODES
    return BenchConfig(
        modes=args.modes or default_modes,
        runs=args.runs,
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31),
        options=options,
        guard=guard,
        variants=variants,
        schedulers=args.schedulers,
        drop_caches=args.drop_caches,
        journal=settings.scheduler_journal,
    )


def run(args: argparse.Namespace, settings: BenchSettings) -> int:
    weight_set = common.weight_set(args, settings)
    config = _config(args, settings)
    if args.out is not None:  # before the bench: its report must not be lost at the end
        check_directory(args.out, "--out")
    measurer = build_measurer(args, settings, weight_set, "bench")
    try:
        result = Bench(measurer, config).run()
    except (BenchError, SchedulerError) as exc:
        raise common.UsageError(str(exc)) from None
    except UnsavedSampleError as exc:
        # The samples before it are stored; the bench stops at the store's first refusal.
        return show_unsaved(exc)
    except TerminatedError as exc:
        # The finally-blocks have run (scheduler restored); the samples so far are stored.
        log.warning("bench stopped", reason=str(exc), store=str(measurer.store.path))
        return 128 + exc.signum
    loads = [s for s in result.samples if s.kind == "load"]
    failed = sum(1 for s in loads if s.outcome != "ok")
    print(
        f"bench {result.bench_id} (seed {result.seed}): {len(loads)} loads of {measurer.model} "
        f"recorded in {measurer.store.path}"
    )
    if result.scheduler_note:
        print(result.scheduler_note)
    print(headline(result.samples))
    if args.out is not None:
        # This bench's samples join those the directory already holds (nothing is lost).
        paths = write_report(args.out, result.samples, source=f"bench {result.bench_id}")
        print(f"report: {paths.markdown} ({paths.samples} samples; csv {paths.csv})")
    if failed:
        print(f"{failed} load(s) failed: see the log above")
    return 1 if failed else 0
