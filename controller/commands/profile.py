"""pagewarm profile: record an engine's start-up (what it reads, in what order), show one."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import structlog
from pydantic import Field

from controller.commands import common, flags
from controller.profile.recorder import DEFAULT_INTERVAL_SECONDS
from controller.profile.schema import (
    DEFAULT_MAX_BYTES,
    ProfileError,
    ProfileKey,
    StartupProfile,
    load,
    outdated_reason,
    save,
)
from controller.profile.session import RecordError, RecordOptions, record_command
from controller.settings import ControllerSettings, HttpUrl, Size
from controller.units import format_bytes
from controller.writable import check_directory, check_file
from exporter.models import ModelSpec
from exporter.weightset import discover

log = structlog.get_logger("pagewarm")

DESCRIPTION = """\
Start-up profiles: the files an engine reads while it starts (its Python modules, the
pages of its shared objects, its configuration), in the order it first touched them.
`pagewarm prewarm --profile` and `pagewarm sidecar --startup-profile` replay one ahead of
the engine on a cold node, with a small I/O depth, before the weights at full speed.

  record   launch a command and record its start-up, until --ready-url answers 200
           (a server; then it is stopped) or until it exits with status 0
  show     print a profile's key, how it was recorded, and its largest entries

How recording works (no root needed): every --interval the recorder reads the engine's
mappings and open files from /proc, watches every file under the library roots they
reveal (site-packages, the standard library, PYTHONPATH) and takes the pages that turned
resident since the last look as read, in that round. It needs the engine's user (or
CAP_SYS_PTRACE) and truthful residency of those files (their owner, or CAP_FOWNER);
without the latter it records only what /proc shows. Record on a cold page cache:
pages resident before the engine starts are not attributed (the profile says how many);
the model's weight files (MODEL_PATH) are left out: the pre-warm reads them.

exit status: 0 recorded (or shown), 1 the recording failed (the command failed, or never
became ready), 2 bad input.

examples:
  pagewarm profile record /models/llama-3-8b --out startup.json.gz \\
      --ready-url http://127.0.0.1:8000/health -- vllm serve /models/llama-3-8b
  pagewarm profile record --model-name tiny --out p.json -- python load.py
  pagewarm profile show startup.json.gz
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="record an engine's start-up profile, or show one",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    record = actions.add_parser(
        "record",
        help="launch a command and record its start-up",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(record)
    record.add_argument("--out", type=Path, required=True, help="the profile (.gz: gzip'd)")
    flag = partial(flags.setting_flag, record, settings=ProfileSettings)
    flag(
        "--engine",
        setting="engine_image",
        metavar="NAME",
        default="the command's name",
        help="the engine part of the profile's key: its image",
    )
    record.add_argument("--model-name", help="the model part of the key (default: from the path)")
    flag(
        "--ready-url",
        setting="profile_ready_url",
        metavar="URL",
        help="the start-up ends when this http(s) URL answers 200",
    )
    flag(
        "--timeout",
        setting="profile_timeout_seconds",
        metavar="SECONDS",
        help="give up when the start-up has not ended by then",
    )
    flag(
        "--interval",
        setting="profile_interval_seconds",
        metavar="SECONDS",
        help="time between two looks: the resolution of the recorded order",
    )
    record.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="another directory to watch from the start (repeatable)",
    )
    flag(
        "--max-bytes",
        setting="profile_max_bytes",
        metavar="SIZE",
        default="1MiB",
        help="the file's size at most (merges ranges, then drops the last entries; "
        "a ConfigMap holds 1MiB)",
    )
    common.add_json(record)
    record.set_defaults(func=run_record, settings_class=ProfileSettings, takes_command=True)
    show = actions.add_parser("show", help="print a profile", formatter_class=common.Formatter)
    show.add_argument("file", type=Path, help="the profile")
    flags.setting_flag(
        show,
        "--entries",
        settings=ProfileSettings,
        setting="profile_entries",
        metavar="N",
        help="how many of the largest to list",
    )
    common.add_json(show)
    show.set_defaults(func=run_show, settings_class=ProfileSettings)


class ProfileSettings(ControllerSettings):
    engine_image: str | None = Field(
        default=None, min_length=1, description="The engine part of a profile's key."
    )
    profile_ready_url: HttpUrl | None = Field(
        default=None, description="A recorded start-up ends when this URL answers 200."
    )
    profile_timeout_seconds: float = Field(default=1800.0, gt=0)
    profile_interval_seconds: float = Field(default=DEFAULT_INTERVAL_SECONDS, gt=0)
    profile_max_bytes: Size = Field(default=DEFAULT_MAX_BYTES, ge=1)
    profile_entries: int = Field(default=10, ge=0)


def _key(
    args: argparse.Namespace, settings: ProfileSettings
) -> tuple[ProfileKey, frozenset[tuple[int, int]]]:
    """The profile's key, and the weight files to leave out (device, inode)."""
    path = args.model_path or settings.model_path
    engine = settings.engine_image or Path(args.command[0]).name
    if path is None:
        if not args.model_name:
            raise common.UsageError("give MODEL_PATH (its weights are left out) or --model-name")
        return ProfileKey(engine=engine, model=args.model_name), frozenset()
    weights = discover(path, settings.weight_patterns, settings.metadata_patterns)
    model = args.model_name or ModelSpec(weights.root, None).label
    exclude = frozenset((f.device, f.inode) for f in weights.weight_files)
    return ProfileKey(engine=engine, model=model), exclude


def run_record(args: argparse.Namespace, settings: ProfileSettings) -> int:
    if not args.command:
        raise common.UsageError("give the command to record after --")
    key, exclude = _key(args, settings)
    # Before the recording: a start-up recorded into a path that refuses it is lost.
    check_file(args.out, "--out")
    check_directory(args.out.parent, "--out's directory")  # the atomic rename writes there
    options = RecordOptions(
        key=key,
        ready_url=settings.profile_ready_url,
        timeout_seconds=settings.profile_timeout_seconds,
        interval_seconds=settings.profile_interval_seconds,
        exclude=exclude,
        roots=tuple(args.root),
    )
    log.info("recording a start-up", command=args.command, key=key.name, out=str(args.out))
    try:
        profile, _ = record_command(args.command, options)
    except RecordError as exc:
        log.error(str(exc))  # noqa: TRY400 - the reason is the message
        return 1
    try:
        written = save(profile, args.out, max_bytes=settings.profile_max_bytes)
    except ProfileError as exc:
        raise common.UsageError(str(exc)) from None
    report(load(args.out), as_json=args.json, written=written, largest=5)
    return 0


def run_show(args: argparse.Namespace, settings: ProfileSettings) -> int:
    try:
        profile = load(args.file)
    except ProfileError as exc:
        raise common.UsageError(str(exc)) from None
    report(
        profile,
        as_json=args.json,
        written=args.file.stat().st_size,
        largest=settings.profile_entries,
    )
    return 0


def report(profile: StartupProfile, *, as_json: bool, written: int, largest: int) -> None:
    totals, recording = profile.totals, profile.recording
    if totals.unattributed_resident_bytes > totals.bytes:
        log.warning(
            "much of what the engine may read was resident before it touched it: record on a "
            "cold page cache for a complete profile",
            unattributed_resident_bytes=totals.unattributed_resident_bytes,
        )
    if recording.method == "mappings":
        log.warning("residency could not be read truthfully: only mapped and open files")
    if (outdated := outdated_reason(profile)) is not None:
        log.warning("record it again", reason=outdated)
    if as_json:
        common.print_json(
            {
                **profile.model_dump(mode="json", by_alias=True, exclude={"entries"}),
                "file_bytes": written,
            }
        )
        return
    top = sorted(profile.entries, key=lambda e: e.pages, reverse=True)[:largest]
    lines = [
        f"profile {profile.key.name}: {totals.entries} files, {format_bytes(totals.bytes)} "
        f"({format_bytes(written)} on disk)",
        f"recorded {recording.recorded_at:%Y-%m-%d %H:%M:%S} on {recording.host} "
        f"({recording.method}, {recording.rounds} rounds of {recording.interval_seconds:g} s, "
        f"{recording.seconds:.1f} s, ended by {recording.ended_by})",
        f"files: {totals.mapped_entries} mapped, {totals.open_entries} open, "
        f"{totals.read_entries} read; {totals.candidate_files} watched, "
        f"{totals.untrusted_files} untrusted; "
        f"{format_bytes(totals.unattributed_resident_bytes)} resident before (not attributed)",
    ]
    if totals.dropped_entries or totals.merged_gap_bytes:
        lines.append(
            f"fitted to size: {format_bytes(totals.merged_gap_bytes)} of gaps merged, "
            f"{totals.dropped_entries} entries ({format_bytes(totals.dropped_bytes)}) dropped"
        )
    lines += [
        f"  {format_bytes(e.pages * profile.page_size):>12}  {e.seen_as:<6}  {e.path}" for e in top
    ]
    print("\n".join(lines))
