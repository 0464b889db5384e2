"""The I/O scheduler experiment: switch the scheduler of the disks under a model, and
always put the original back.

Switching is a change to the host, so it happens only when asked for explicitly (`pagewarm
bench --schedulers`) and only where the scheduler file is writable. The original is
restored in a finally-block, on SIGINT, SIGTERM and SIGHUP (turned into exceptions so the
finally-blocks run), and after anything worse (SIGKILL, a crash, a power cut) from a small
journal written before the first switch: `pagewarm scheduler restore` reads it. A journal
left behind blocks the next experiment until it has been restored, so the "original"
recorded is never an experiment's leftover.

The sysfs root is a setting (PAGEWARM_SYSFS_ROOT, ``controller.settings.SchedulerSettings``):
tests point it at a tree they control.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from controller.linux.durable import write_atomically
from exporter.linux.blockdev import SYSFS, Storage, parse_scheduler

log = structlog.get_logger("pagewarm")

RESTORE_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class SchedulerError(Exception):
    """The experiment cannot start or a switch failed (the original is restored)."""


class TerminatedError(BaseException):
    """SIGTERM/SIGHUP during an experiment: unwinds like KeyboardInterrupt so the
    finally-blocks restore the scheduler."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass(frozen=True, slots=True)
class SchedulerFile:
    device: str
    path: Path

    def read(self) -> tuple[str | None, tuple[str, ...]]:
        return parse_scheduler(self.path.read_text())

    @property
    def current(self) -> str | None:
        return self.read()[0]

    def write(self, name: str) -> None:
        # sysfs takes the whole name in one write; a failed switch raises EINVAL.
        fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, name.encode())
        finally:
            os.close(fd)
        now = self.current
        if now != name:
            raise SchedulerError(f"{self.path}: wrote {name!r} but it reads {now!r}")

    def unwritable_reason(self) -> str | None:
        """None when this process may switch the scheduler; else why not."""
        if not self.path.exists():
            return f"{self.path} does not exist (the device has no I/O scheduler)"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)  # opening writes nothing
        except OSError as exc:
            return f"{self.path} is not writable here ({exc.strerror}; switching needs root)"
        os.close(fd)
        return None


def scheduler_files(storage: Storage | None, sysfs: Path = SYSFS) -> list[SchedulerFile]:
    if storage is None:
        return []
    return [
        SchedulerFile(d.name, sysfs / "block" / d.name / "queue" / "scheduler")
        for d in storage.devices
    ]


def why_not_switchable(files: list[SchedulerFile], storage: Storage | None) -> str | None:
    if not files:
        fstype = storage.fstype if storage else "unknown"
        return f"the model's filesystem ({fstype}) has no block device, so no I/O scheduler"
    for f in files:
        reason = f.unwritable_reason()
        if reason:
            return reason
    return None


# The journal ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalEntry:
    device: str
    path: str
    original: str


@dataclass(frozen=True, slots=True)
class Journal:
    pid: int
    started: str
    entries: tuple[JournalEntry, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "started": self.started,
                "entries": [
                    {"device": e.device, "path": e.path, "original": e.original}
                    for e in self.entries
                ],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Journal:
        data: dict[str, Any] = json.loads(text)
        return cls(
            int(data["pid"]),
            str(data["started"]),
            tuple(
                JournalEntry(str(e["device"]), str(e["path"]), str(e["original"]))
                for e in data["entries"]
            ),
        )


def read_journal(path: Path) -> Journal | None:
    try:
        return Journal.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise SchedulerError(f"scheduler journal {path} is unreadable: {exc}") from None


def write_journal(path: Path, journal: Journal) -> None:
    """Atomically, durably (the journal is what a crash leaves to restore from)."""
    write_atomically(path, journal.to_json().encode(), mode=0o600)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not running anything
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


@dataclass(frozen=True, slots=True)
class Restored:
    device: str
    path: str
    original: str
    error: str | None  # None: restored


def restore_entries(entries: tuple[JournalEntry, ...]) -> list[Restored]:
    results = []
    for e in entries:
        try:
            SchedulerFile(e.device, Path(e.path)).write(e.original)
        except (OSError, SchedulerError) as exc:
            results.append(Restored(e.device, e.path, e.original, str(exc)))
        else:
            results.append(Restored(e.device, e.path, e.original, None))
    return results


def restore_from_journal(path: Path, *, force: bool = False) -> list[Restored] | None:
    """Put back what a crashed experiment switched; None when there is no journal. The
    journal is removed only when every device was restored."""
    journal = read_journal(path)
    if journal is None:
        return None
    if not force and _pid_alive(journal.pid):
        raise SchedulerError(
            f"the experiment that wrote {path} is still running (pid {journal.pid}); it "
            "restores the scheduler itself when it ends (use --force to restore now)"
        )
    results = restore_entries(journal.entries)
    if all(r.error is None for r in results):
        path.unlink(missing_ok=True)
    return results


def refuse_leftover(journal_path: Path) -> None:
    """An experiment must not start on top of one that did not restore: what it would
    record as the original would be the leftover switch."""
    leftover = read_journal(journal_path)
    if leftover is not None:
        raise SchedulerError(
            f"a previous scheduler experiment (pid {leftover.pid}, {leftover.started}) "
            f"did not restore its schedulers: run `pagewarm scheduler restore` first "
            f"(journal: {journal_path})"
        )


# The experiment ---------------------------------------------------------------------------


class SchedulerExperiment:
    """``with SchedulerExperiment(files, journal) as exp: exp.switch("none") ...``: the
    originals are journaled before the first switch and restored on the way out, whatever
    the way out is."""

    def __init__(self, files: list[SchedulerFile], journal_path: Path) -> None:
        if not files:
            raise SchedulerError("no scheduler file to switch")
        self.files = files
        self.journal_path = journal_path
        self.originals: dict[str, str] = {}
        self.offered: tuple[str, ...] = ()
        self._previous_handlers: dict[int, Any] = {}
        self.active: str | None = None

    def __enter__(self) -> SchedulerExperiment:
        refuse_leftover(self.journal_path)
        offered: set[str] | None = None
        for f in self.files:
            current, names = f.read()
            if current is None:
                raise SchedulerError(f"{f.path} shows no current scheduler: {names}")
            self.originals[f.device] = current
            offered = set(names) if offered is None else offered & set(names)
        self.offered = tuple(sorted(offered or ()))
        write_journal(
            self.journal_path,
            Journal(
                os.getpid(),
                datetime.now(UTC).isoformat(),
                tuple(
                    JournalEntry(f.device, str(f.path), self.originals[f.device])
                    for f in self.files
                ),
            ),
        )
        self._install_handlers()
        self.active = self.original
        return self

    @property
    def original(self) -> str:
        """The original scheduler (of the first disk when several serve the model)."""
        return self.originals[self.files[0].device]

    def switch(self, name: str) -> None:
        if name == self.active:
            return
        for f in self.files:
            try:
                f.write(name)
            except OSError as exc:
                raise SchedulerError(f"cannot switch {f.device} to {name}: {exc}") from exc
        self.active = name
        log.info("I/O scheduler switched", scheduler=name, devices=[f.device for f in self.files])

    def __exit__(self, *exc: object) -> None:
        try:
            results = restore_entries(
                tuple(
                    JournalEntry(f.device, str(f.path), self.originals[f.device])
                    for f in self.files
                )
            )
            failed = [r for r in results if r.error]
            for r in failed:
                log.error(
                    "I/O scheduler NOT restored: run `pagewarm scheduler restore`",
                    device=r.device,
                    original=r.original,
                    error=r.error,
                    journal=str(self.journal_path),
                )
            if not failed:
                self.journal_path.unlink(missing_ok=True)
                log.info("I/O scheduler restored", scheduler=self.original)
            self.active = None
        finally:
            self._restore_handlers()

    def _install_handlers(self) -> None:
        def raise_terminated(signum: int, _frame: FrameType | None) -> None:
            raise TerminatedError(signum)

        handler: Callable[[int, FrameType | None], None] = raise_terminated
        for sig in RESTORE_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: finally still holds
                self._previous_handlers[sig] = signal.signal(sig, handler)

    def _restore_handlers(self) -> None:
        for sig, previous in self._previous_handlers.items():
            signal.signal(sig, previous)
        self._previous_handlers.clear()
