"""pagewarm scheduler: show the I/O scheduler under a model; restore after a crash."""

from __future__ import annotations

import argparse
from pathlib import Path

from controller.commands import common
from controller.scheduler import (
    SchedulerError,
    read_journal,
    restore_from_journal,
    scheduler_files,
    why_not_switchable,
)
from controller.settings import SchedulerSettings
from exporter.linux.blockdev import storage_for_path

DESCRIPTION = """\
The I/O scheduler of the disks that serve a model, and recovery for the scheduler
experiment of `pagewarm bench --schedulers`.

The bench journals the original scheduler before it switches
($PAGEWARM_SCHEDULER_JOURNAL, default ~/.local/state/pagewarm/scheduler-journal.json) and
restores it when it ends, also on Ctrl-C and SIGTERM. After a SIGKILL, a crash or a
reboot mid-experiment, `restore` puts the original back from that journal.

examples:
  pagewarm scheduler show /models/llama-3-8b
  pagewarm scheduler restore
  pagewarm scheduler restore --journal /var/lib/pagewarm/scheduler-journal.json
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "scheduler",
        help="show the I/O scheduler; restore it after a crashed experiment",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show", help="the scheduler under MODEL_PATH", formatter_class=common.Formatter
    )
    common.add_model_path(show)
    show.set_defaults(func=run_show, settings_class=SchedulerSettings)
    restore = actions.add_parser(
        "restore",
        help="put back the schedulers a crashed experiment switched",
        formatter_class=common.Formatter,
    )
    restore.add_argument("--journal", type=Path, default=None, help="the journal file")
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore even though the experiment's process still runs",
    )
    restore.set_defaults(func=run_restore, settings_class=SchedulerSettings)


def run_show(args: argparse.Namespace, settings: SchedulerSettings) -> int:
    path = common.model_path(args, settings)
    if not path.exists():
        raise common.UsageError(f"model path {path} does not exist")
    storage = storage_for_path(path, sysfs=settings.sysfs_root)
    files = scheduler_files(storage, settings.sysfs_root)
    if storage is not None:
        print(f"{path}: {storage.fstype} on {storage.source} (mounted at {storage.mountpoint})")
    for f in files:
        try:
            current, offered = f.read()
        except OSError as exc:
            print(f"{f.device}: scheduler unreadable ({exc.strerror})")
            continue
        print(f"{f.device}: {current or 'none'} (offered: {', '.join(offered) or '-'})")
    reason = why_not_switchable(files, storage)
    print("switchable here: " + ("yes" if reason is None else f"no: {reason}"))
    journal = read_journal(settings.scheduler_journal)
    if journal is not None:
        print(
            f"PENDING: experiment of pid {journal.pid} ({journal.started}) left a journal at "
            f"{settings.scheduler_journal}: run `pagewarm scheduler restore`"
        )
    return 0


def run_restore(args: argparse.Namespace, settings: SchedulerSettings) -> int:
    journal = args.journal or settings.scheduler_journal
    try:
        results = restore_from_journal(journal, force=args.force)
    except SchedulerError as exc:
        raise common.UsageError(str(exc)) from None
    if results is None:
        print(f"nothing to restore: no journal at {journal}")
        return 0
    for r in results:
        if r.error:
            print(f"{r.device}: NOT restored to {r.original}: {r.error}")
        else:
            print(f"{r.device}: restored to {r.original}")
    return 1 if any(r.error for r in results) else 0
