"""pagewarm prewarm: fill the page cache with a model's weight set."""

from __future__ import annotations

import argparse
import threading
from functools import partial
from pathlib import Path

import structlog

from controller.commands import common, flags
from controller.interrupts import interruptible
from controller.memguard import MemoryGuard
from controller.prewarm import PrewarmOptions, PrewarmResult, prewarm
from controller.profile.replay import ReplayProgress, ReplayResult, replay
from controller.profile.schema import ProfileError, load, outdated_reason
from controller.settings import ControllerSettings
from controller.units import format_bytes, format_rate, format_ratio
from exporter.linux.files import FileRoot
from exporter.weightset import WeightSet

log = structlog.get_logger("pagewarm")

DESCRIPTION = """\
Read a model's weight files into the page cache, in the order a loader reads them,
as fast as the storage allows, and only what is not resident already.

Strategies: populate (mmap + MADV_POPULATE_READ, Linux 5.14+: no copy to user space),
read (parallel preadv), auto (populate when the kernel has it).

The memory guard keeps the warm within MemAvailable and the memory cgroup's limit
(page cache is charged to the cgroup that reads it) minus a reserve. A model larger
than that budget is warmed up to it, in load order, and the result says 'partial'.

The thread buffers of the read strategy take at most a quarter of the budget (fewer
threads, smaller buffers when needed): a warm always makes progress when any budget
exists, and fails (exit 1) with the reason when there is none. Each file is checked when
its turn comes: one truncated, grown, rewritten or replaced since the model was listed is
warmed as it is now, and named in the result.

exit status: 0 warmed (or partial because of the memory budget), 1 some files failed
(truncated, replaced or unreadable mid-warm; the rest were warmed), files changed before
their turn, or no memory budget at all, 2 bad input, 130/143 cancelled by SIGINT/SIGTERM
(within one step; the partial result is printed).

--profile FILE replays an engine's start-up profile first (`pagewarm profile record`):
its libraries and configuration, in the order the engine reads them, with --io-depth
reads in flight (2: the engine's own small reads are not queued behind ours), then the
weights at full speed. The metadata the engine's imports look up comes in too: each
directory the profile reads from is listed, and every file an installed distribution's
RECORD lists is looked up (Python's packages_distributions() checks them all; after
drop_caches each is a cold inode). Run it while the engine starts. Stale entries (the
file changed since the recording) and missing files are skipped and counted, never an
error.

examples:
  pagewarm prewarm /models/llama-3-8b
  pagewarm prewarm /models/llama-3-8b --profile startup.json.gz &  vllm serve ...
  pagewarm prewarm /models/llama-3-8b --profile p.json.gz --profile-root /proc/1234/root
  pagewarm prewarm /models/llama-3-8b --strategy read --threads 16
  pagewarm prewarm /models/llama-3-8b --rate-limit 200MiB --json
  MODEL_PATH=/models/llama-3-8b pagewarm prewarm --reserve 2GiB
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "prewarm",
        help="read a model into the page cache",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(parser)
    add_prewarm_options(parser)
    profile = parser.add_argument_group("start-up profile")
    profile.add_argument(
        "--profile", type=Path, default=None, metavar="FILE", help="replay this profile first"
    )
    profile.add_argument(
        "--profile-root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="where the profile's paths are (an engine's root: /proc/PID/root)",
    )
    flags.setting_flag(
        profile,
        "--io-depth",
        settings=ControllerSettings,
        setting="startup_profile_io_depth",
        metavar="N",
        help="reads in flight while replaying the profile, 1 to 64",
    )
    common.add_json(parser)
    parser.set_defaults(func=run)


def add_prewarm_options(parser: argparse.ArgumentParser) -> None:
    """The engine's knobs (also used by init, sidecar, measure and bench): each flag sets
    its PAGEWARM_PREWARM_* setting, through the settings' validation."""
    group = parser.add_argument_group("pre-warm")
    bound = partial(flags.setting_flag, group, settings=ControllerSettings)
    bound(
        "--strategy", setting="prewarm_strategy", metavar="{auto,populate,read}", help="how to read"
    )
    bound("--threads", setting="prewarm_threads", metavar="N", help="parallel readers, 1 to 256")
    bound(
        "--chunk",
        setting="prewarm_chunk_bytes",
        metavar="SIZE",
        default="64MiB",
        help="work unit handed to a thread, at least 1MiB",
    )
    bound(
        "--reserve",
        setting="prewarm_reserve_bytes",
        metavar="SIZE",
        default="256MiB",
        help="memory always left free",
    )
    bound(
        "--rate-limit",
        setting="prewarm_rate_limit_bytes",
        metavar="BYTES_PER_S",
        help="read at most this many bytes per second, e.g. 200MiB",
    )
    flags.setting_switch(
        group,
        "--no-memory-guard",
        settings=ControllerSettings,
        setting="prewarm_memory_guard",
        value=False,
        help="warm everything even past the memory budget (the kernel then evicts)",
    )
    group.add_argument(
        "--all", action="store_true", help="touch every range, also those already resident"
    )


def options_from(
    args: argparse.Namespace, settings: ControllerSettings
) -> tuple[PrewarmOptions, MemoryGuard]:
    """The warm the settings (flags applied) describe."""
    options = PrewarmOptions(
        strategy=settings.prewarm_strategy,
        threads=settings.prewarm_threads,
        chunk_bytes=settings.prewarm_chunk_bytes,
        only_missing=not args.all,
        rate_limit_bytes_per_second=settings.prewarm_rate_limit_bytes,
    )
    guard = MemoryGuard(settings.prewarm_reserve_bytes, enabled=settings.prewarm_memory_guard)
    return options, guard


def run(args: argparse.Namespace, settings: ControllerSettings) -> int:
    weight_set = common.weight_set(args, settings)
    # SIGINT, SIGTERM: the warm stops within one step; its partial result is printed.
    with interruptible() as interrupt, interrupt.polled() as cancel:
        startup = replay_profile(args, settings, cancel) if args.profile else None
        result = prewarm_with_progress(weight_set, args, settings, cancel)
    if startup is not None and not args.json:
        report_replay(startup)
    report(result, as_json=args.json, startup=startup)
    if interrupt.exit_status is not None:
        return interrupt.exit_status
    return exit_status(result)


def exit_status(result: PrewarmResult) -> int:
    """1 when the warm failed (files not warmed, or nothing warmed for want of memory) or
    the model changed under it: what is resident is not what was asked for."""
    return 1 if result.failed or result.changed_files else 0


def replay_profile(
    args: argparse.Namespace, settings: ControllerSettings, cancel: threading.Event
) -> ReplayResult:
    try:
        profile = load(args.profile)
        root = FileRoot(args.profile_root)
    except ProfileError as exc:
        raise common.UsageError(str(exc)) from None
    except OSError as exc:
        raise common.UsageError(f"--profile-root {args.profile_root}: {exc.strerror}") from None
    if (outdated := outdated_reason(profile)) is not None:
        log.warning("replayed as it is; record it again", reason=outdated)
    _, guard = options_from(args, settings)
    with root, common.progress("profile", profile.totals.bytes) as update:
        progress = ReplayProgress()
        return replay(
            profile,
            root,
            io_depth=settings.startup_profile_io_depth,
            probe=common.probe(settings),
            guard=guard,
            cancel=cancel,
            progress=progress,
            on_progress=lambda: update(progress.done_bytes),
        )


def report_replay(result: ReplayResult) -> None:
    skipped = result.stale_entries + result.missing_entries + result.failed_entries
    print(
        f"start-up profile {result.profile}: read {format_bytes(result.read_bytes)} in "
        f"{result.seconds:.2f} s (I/O depth {result.io_depth}), "
        f"{format_bytes(result.resident_bytes)} already resident; "
        f"{result.replayed_entries} of {result.entries} files, {skipped} skipped "
        f"({result.stale_entries} stale, {result.missing_entries} missing, "
        f"{result.failed_entries} failed)"
        + (
            f"; {result.looked_up_paths} paths of RECORDs looked up"
            if result.looked_up_paths
            else ""
        )
    )
    for problem in result.problems:
        log.info("profile entry skipped", detail=problem)


def prewarm_with_progress(
    weight_set: WeightSet,
    args: argparse.Namespace,
    settings: ControllerSettings,
    cancel: threading.Event | None = None,
) -> PrewarmResult:
    """The engine as the commands run it: options from flags and settings, a progress bar
    on a terminal (progress logs otherwise)."""
    options, guard = options_from(args, settings)
    with common.progress("prewarm", weight_set.total_bytes) as update:
        return prewarm(
            weight_set,
            options,
            probe=common.probe(settings),
            guard=guard,
            on_progress=lambda p: update(p.done_bytes),
            cancel=cancel,
        )


def report(result: PrewarmResult, *, as_json: bool, startup: ReplayResult | None = None) -> None:
    for error in result.file_errors:
        log.error("file not warmed", path=error.path, error=error.error)
    for change in result.changed_files:
        log.warning(
            "file changed before its turn, warmed as it is now",
            path=change.path,
            change=str(change.change),
            planned_size=change.planned_size,
            size=change.size,
        )
    if result.failure_reason:
        log.error("pre-warm failed", reason=result.failure_reason)
    if result.partial:
        log.warning(
            "pre-warm partial",
            reason=result.partial_reason,
            resident_after_bytes=result.after.cached_bytes,
            size_bytes=result.size_bytes,
        )
    if as_json:
        document = result.to_dict()
        if startup is not None:
            document["startup_profile"] = startup.to_dict()
        common.print_json(document)
        return
    trust = (
        "trusted"
        if result.after.trusted
        else "UNTRUSTED: " + "; ".join(result.after.unknown_reasons)
    )
    budget = "off" if result.budget_bytes is None else format_bytes(result.budget_bytes)
    lines = [
        f"read {format_bytes(result.read_bytes)} in {result.seconds:.2f} s "
        f"({format_rate(result.throughput_bytes_per_second)}), "
        f"{format_bytes(result.skipped_resident_bytes)} already resident",
        f"resident after: {format_bytes(result.after.cached_bytes)} of "
        f"{format_bytes(result.size_bytes)} ({format_ratio(result.after.ratio)}, {trust})",
        f"strategy {result.strategy} ({result.strategy_reason}), {result.threads} threads, "
        f"memory budget {budget}",
    ]
    if result.partial:
        lines.append(f"PARTIAL: {result.partial_reason}")
    if result.changed_files:
        lines.append(f"CHANGED: {len(result.changed_files)} file(s) changed before their turn")
        lines += [f"  {c.path}: {c.describe()}" for c in result.changed_files]
    if result.failure_reason:
        lines.append(f"FAILED: {result.failure_reason}")
    print("\n".join(lines))
