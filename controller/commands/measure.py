"""pagewarm measure: time one model load and record it as a sample."""

from __future__ import annotations

import argparse
import sys

import structlog

from controller.commands import common
from controller.commands.prewarm import add_prewarm_options, options_from
from controller.evict import evict
from controller.loaders import LOADERS
from controller.measure import LoadTarget, MeasureError, Measurer, UnsavedSampleError
from controller.samplestore import SampleStore
from controller.sampling import ModeError, SampleHeader, Setup
from controller.settings import BenchSettings
from controller.units import format_ratio
from exporter.samples import Mode, Sample
from exporter.weightset import WeightSet, model_name_for_path

DESCRIPTION = """\
Time one load of a model and append it to the sample store ($PAGEWARM_SAMPLES, default
~/.local/state/pagewarm/samples.jsonl, or $XDG_STATE_HOME/pagewarm/samples.jsonl).

Three ways to load:
  --loader safetensors|torch|torch-cuda   read every tensor with the safetensors library
                                          (numpy; torch on the CPU; torch onto the GPU)
  --url URL [-- COMMAND ...]              until URL answers 200, from the start of COMMAND
                                          (started here, stopped afterwards) or from now
  -- COMMAND ...                          a command, to its exit (status 0 = ok)

The residency of the model's files is measured before and after the load. The mode is
given with --mode or derived from that measurement; a load declared cold whose files were
in fact resident is recorded with the measured mode (declared_mode keeps what was said,
mode_verified=false), never silently as cold.

The files and the sample store are checked before anything is loaded: the wrong loader for
the files, a corrupt safetensors header, or a store that cannot be written (a directory,
/proc, a read-only directory) is one line and exit 2, and records nothing. A store that
refuses the sample after the load gets it printed on stdout (one JSON line) instead.

exit status: 0 the load succeeded, 1 it failed or timed out, or the store refused its
sample (printed on stdout), 2 bad input.

examples:
  pagewarm measure /models/llama-3-8b --evict --mode cold
  pagewarm measure /models/llama-3-8b --mode warm --loader torch
  pagewarm measure /models/llama-3-8b --evict --prewarm --mode prewarm_cold
  pagewarm measure /models/llama-3-8b --mode cold --url http://127.0.0.1:8000/health \\
      -- vllm serve /models/llama-3-8b
  pagewarm measure /models/llama-3-8b --url http://127.0.0.1:8000/health   # already starting
  pagewarm measure /models/llama-3-8b -- python load_my_model.py
"""

log = structlog.get_logger("pagewarm")

MODES = (Mode.COLD, Mode.WARM, Mode.PREWARM_COLD, Mode.PREWARM_WARM)


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """What to time and how to label it (shared with bench)."""
    group = parser.add_argument_group("load")
    group.add_argument(
        "--loader",
        choices=list(LOADERS),
        default=None,
        help="built-in loader (default: safetensors, unless --url or a command is given)",
    )
    group.add_argument("--url", help="time until this URL answers 200 (vLLM: .../health)")
    group.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop a URL or command load after this long: outcome timed_out "
        "(default: $PAGEWARM_LOAD_TIMEOUT_SECONDS or 1800)",
    )
    group.add_argument("--model-name", help="the model's name in samples (default: from the path)")
    common.add_samples(group)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "measure",
        help="time one model load and record a sample",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(parser)
    parser.add_argument(
        "--mode",
        type=Mode,
        choices=MODES,
        default=None,
        help="the cache state the load starts from (default: derived from residency)",
    )
    parser.add_argument(
        "--evict", action="store_true", help="evict the model's pages first (for --mode cold)"
    )
    parser.add_argument(
        "--prewarm",
        action="store_true",
        help="pre-warm first and record it (for --mode prewarm_cold / prewarm_warm)",
    )
    add_load_options(parser)
    add_prewarm_options(parser)
    common.add_json(parser)
    parser.set_defaults(func=run, settings_class=BenchSettings, takes_command=True)


def build_measurer(
    args: argparse.Namespace, settings: BenchSettings, weight_set: WeightSet, source: str
) -> Measurer:
    command = tuple(getattr(args, "command", None) or ())
    try:
        target = LoadTarget.build(args.loader, args.url, command)
    except MeasureError as exc:
        raise common.UsageError(str(exc)) from None
    target.check_files(weight_set)
    store = SampleStore(args.samples or settings.samples)
    store.check_writable()  # before the load: a store that refuses the sample loses it
    timeout = args.timeout if args.timeout is not None else settings.load_timeout_seconds
    if timeout <= 0:
        raise common.UsageError("--timeout must be positive")
    return Measurer(
        header=SampleHeader(
            source=source,
            model=args.model_name or model_name_for_path(common.model_path(args, settings)),
            weight_set=weight_set,
            setup=Setup.detect(weight_set.root, settings.sysfs_root),
        ),
        target=target,
        probe=common.probe(settings),
        store=store,
        timeout=timeout,
    )


def run(args: argparse.Namespace, settings: BenchSettings) -> int:
    weight_set = common.weight_set(args, settings)
    measurer = build_measurer(args, settings, weight_set, "measure")
    try:
        return _measure(args, settings, weight_set, measurer)
    except UnsavedSampleError as exc:
        return show_unsaved(exc)


def show_unsaved(exc: UnsavedSampleError) -> int:
    """The store refused a sample after its measurement: the sample on stdout (one JSON
    line), nothing measured lost; exit status 1."""
    log.error(str(exc))
    sys.stdout.write(exc.sample.to_json_line())
    return 1


def _measure(
    args: argparse.Namespace, settings: BenchSettings, weight_set: WeightSet, measurer: Measurer
) -> int:
    if args.evict:
        evict(weight_set, measurer.probe)
    prewarm_sample = None
    if args.prewarm:
        options, guard = options_from(args, settings)
        with common.progress("prewarm", weight_set.total_bytes) as update:
            prewarm_sample = measurer.prewarm(options, guard, on_progress=update)
    with common.progress("load", weight_set.total_bytes) as update:
        try:
            sample = measurer.measure(args.mode, prewarm_sample=prewarm_sample, on_progress=update)
        except ModeError as exc:
            raise common.UsageError(str(exc)) from None
    print_sample(sample, prewarm_sample, as_json=args.json, store=str(measurer.store.path))
    return 0 if sample.outcome == "ok" else 1


def print_sample(
    sample: Sample, prewarm_sample: Sample | None, *, as_json: bool, store: str
) -> None:
    if as_json:
        document = sample.model_dump(mode="json", by_alias=True)
        if prewarm_sample is not None:
            document["prewarm"] = prewarm_sample.model_dump(mode="json", by_alias=True)
        document["store"] = store
        common.print_json(document)
        return
    declared = (
        f" (declared {sample.declared_mode}: NOT what was measured)"
        if sample.mode_verified is False
        else (" (unverified: residency unknown)" if sample.mode_verified is None else "")
    )
    lines = [
        f"{sample.model}: {sample.mode}{declared} load with {sample.loader}: "
        f"{sample.seconds:.3f} s, {sample.outcome}"
        + (f" ({sample.error})" if sample.error else ""),
        f"resident before {format_ratio(sample.resident_ratio_before)}, after "
        f"{format_ratio(sample.resident_ratio_after)}",
    ]
    if prewarm_sample is not None:
        lines.append(
            f"pre-warm before it: {prewarm_sample.seconds:.3f} s "
            f"({prewarm_sample.strategy}, {prewarm_sample.threads} threads)"
        )
    lines.append(f"recorded in {store}")
    print("\n".join(lines))
