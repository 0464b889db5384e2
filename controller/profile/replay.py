"""Replaying a start-up profile: its ranges into the page cache, in the order the engine
first touched them, with little I/O in flight.

The replay runs while the engine itself is importing from the same disk, and the engine's
reads are small and synchronous: large or many parallel reads of ours would queue in
front of them (mq-deadline never idles for a waiting reader), and the imports would slow
by as much as the replay saved. So ``io_depth`` readers (2 by default, as Android 16's
libprefetch) each read one piece of at most ``STEP_BYTES`` at a time, with readahead off
on our descriptors (POSIX_FADV_RANDOM): the recorded ranges already hold the readahead the
engine caused. Only what is missing is read (cachestat first), so a replay on a warm
cache costs next to nothing.

Before the first file of a directory, the directory is listed and its entries looked up
(as Python's importer does): after drop_caches, directory blocks and inodes are cold too.
After a distribution's ``RECORD`` (``*.dist-info/RECORD``), every path it lists is looked
up: ``importlib.metadata.packages_distributions()``, which transformers calls on import,
checks that each one exists, and torch's lists some 15k files the engine never reads (its
headers). Measured on the H200 box (bench/gpu/startup_diag.py, all cold, the profile
replayed): 3.2 s of the engine's imports went to those lookups, 1.0 s warm.

Stale entries (the file at the path is not the one recorded: size, mtime, or inode on the
same device) and missing files are skipped and counted, never an error; so are files that
cannot be opened (counted as failed, the first reasons kept). Paths are opened under a
``FileRoot``: the engine's root (``/proc/<pid>/root``) in a pod.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import posixpath
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from controller.linux.pagecache import read_through
from controller.memguard import MemoryGuard
from controller.profile.schema import ProfileEntry, StartupProfile
from controller.units import MiB
from exporter.linux.files import FileRoot, NotRegularFileError
from exporter.linux.libc import page_size
from exporter.residency import ResidencyProbe

DEFAULT_IO_DEPTH = 2
STEP_BYTES = 1 * MiB
MAX_PROBLEMS = 5  # reasons kept for the result (the counts cover all)
RECORD_SUFFIX = ".dist-info/RECORD"
MAX_RECORD_BYTES = 64 * MiB  # torch's is about 2 MiB
_MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})


@dataclass(slots=True)
class ReplayProgress:
    """Live state of a replay (read by the sidecar's /status and metrics)."""

    planned_bytes: int = 0
    done_bytes: int = 0  # read, found resident or skipped (stale, missing)
    read_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ReplayResult:
    profile: str  # the profile's key: engine and model
    io_depth: int
    entries: int
    replayed_entries: int
    stale_entries: int
    missing_entries: int
    failed_entries: int
    planned_bytes: int
    read_bytes: int  # brought into the page cache by this replay
    resident_bytes: int  # already there
    looked_up_paths: int  # paths listed by distributions' RECORDs, looked up and found
    seconds: float
    partial_reason: str | None
    problems: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "io_depth": self.io_depth,
            "entries": self.entries,
            "replayed_entries": self.replayed_entries,
            "stale_entries": self.stale_entries,
            "missing_entries": self.missing_entries,
            "failed_entries": self.failed_entries,
            "planned_bytes": self.planned_bytes,
            "read_bytes": self.read_bytes,
            "resident_bytes": self.resident_bytes,
            "looked_up_paths": self.looked_up_paths,
            "seconds": round(self.seconds, 6),
            "partial_reason": self.partial_reason,
            "problems": list(self.problems),
        }


@dataclass(slots=True)
class _Entry:
    entry: ProfileEntry
    remaining: int  # steps not finished
    lock: threading.Lock = field(default_factory=threading.Lock)
    fd: int | None = None
    state: str = "pending"  # open, stale, missing, failed, done


class _Replay:
    def __init__(
        self,
        profile: StartupProfile,
        root: FileRoot,
        *,
        probe: ResidencyProbe,
        guard: MemoryGuard,
        cancel: threading.Event,
        progress: ReplayProgress,
        on_progress: Callable[[], None] | None,
    ) -> None:
        self.on_progress = on_progress
        self.root = root
        self.probe = probe
        self.guard = guard
        self.cancel = cancel
        self.progress = progress
        self.page = page_size()
        self.steps = profile.steps()
        self.entries = [_Entry(e, 0) for e in profile.entries]
        for index, _, _ in self.steps:
            self.entries[index].remaining += 1
        self.lock = threading.Lock()
        self.next_step = 0
        self.resident_bytes = 0
        self.stop_reason: str | None = None
        self.problems: list[str] = []
        self.listed: set[str] = set()  # directories whose entries were looked up
        self.looked_up = 0  # paths from RECORDs

    def worker(self) -> None:
        buffer = bytearray(STEP_BYTES)
        while (step := self._take()) is not None:
            index, offset, length = step
            entry = self.entries[index]
            try:
                fd = self._open(entry)
                if fd is not None:
                    self._warm(fd, offset, length, buffer, entry)
                else:
                    self._advance(length, read=0)
            finally:
                self._finish_step(entry)

    def _take(self) -> tuple[int, int, int] | None:
        with self.lock:
            if self.stop_reason or self.cancel.is_set() or self.next_step >= len(self.steps):
                return None
            step = self.steps[self.next_step]
            self.next_step += 1
            return step

    def _problem(self, entry: _Entry, state: str, reason: str) -> None:
        entry.state = state
        with self.lock:
            if len(self.problems) < MAX_PROBLEMS:
                self.problems.append(f"{entry.entry.path}: {reason}")

    def _list_directory(self, path: str) -> None:
        """The first time a directory comes up: list it and look up its entries, as an
        importer does (a path finder lists every package directory, and stats the source
        beside each bytecode file). After drop_caches that metadata (directory blocks,
        inodes) is cold too, and no file's page cache holds it."""
        directory = path.rpartition("/")[0] or "/"
        with self.lock:
            if directory in self.listed:
                return
            self.listed.add(directory)
        with contextlib.suppress(OSError), os.scandir(self.root.host_path(directory)) as found:
            for item in found:
                with contextlib.suppress(OSError):
                    item.stat(follow_symlinks=False)

    def _open(self, entry: _Entry) -> int | None:
        """The entry's descriptor, opened and checked by the first step that needs it."""
        with entry.lock:
            if entry.state == "pending":
                self._list_directory(entry.entry.path)
                try:
                    fd = self.root.open(entry.entry.path)
                except NotRegularFileError:
                    self._problem(entry, "stale", "no longer a regular file")
                except OSError as exc:
                    if exc.errno in _MISSING_ERRNOS:
                        entry.state = "missing"
                    else:
                        self._problem(entry, "failed", exc.strerror or str(exc))
                else:
                    self._check(entry, fd)
            return entry.fd if entry.state == "open" else None

    def _check(self, entry: _Entry, fd: int) -> None:
        stale = entry.entry.identity.stale_reason(os.fstat(fd))
        if stale is not None:
            os.close(fd)
            self._problem(entry, "stale", stale)
            return
        # Exactly the recorded ranges: they already hold the engine's own readahead.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        entry.fd, entry.state = fd, "open"

    def _warm(self, fd: int, offset: int, length: int, buffer: bytearray, entry: _Entry) -> None:
        start = offset - offset % self.page  # a recording's pages may be smaller than ours
        end = min(offset + length, entry.entry.identity.size)
        for piece in range(start, end, STEP_BYTES):
            if self.cancel.is_set():
                return
            size = min(STEP_BYTES, end - piece)
            cached = self.probe.cached_bytes(fd, piece, size) or 0
            missing = size - cached
            if missing <= 0:
                self._advance(size, read=0, resident=size)
                continue
            if self.guard.grant_up_to(missing) < missing:
                with self.lock:
                    self.stop_reason = self.stop_reason or self.guard.refused_reason
                return
            try:
                read_through(fd, piece, size, buffer)
            except OSError as exc:
                self._problem(entry, "failed", f"read failed: {exc.strerror or exc}")
                return
            self._advance(size, read=missing, resident=cached)

    def _advance(self, done: int, *, read: int, resident: int = 0) -> None:
        with self.lock:
            self.progress.done_bytes += done
            self.progress.read_bytes += read
            self.resident_bytes += resident
        if self.on_progress is not None:
            self.on_progress()

    def _look_up_record(self, entry: _Entry, fd: int) -> None:
        """Look up every path a distribution's RECORD lists (relative to the directory
        that holds its .dist-info), as ``packages_distributions()`` does. ``..`` cannot
        leave the root and a last component that is a link is not followed; these are
        lookups only, nothing is read through them (as with ``_list_directory``)."""
        size = min(entry.entry.identity.size, MAX_RECORD_BYTES)
        text = os.pread(fd, size, 0).decode("utf-8", "replace")
        base = posixpath.dirname(posixpath.dirname(entry.entry.path))
        found = 0
        for row in csv.reader(text.splitlines()):
            if self.cancel.is_set():
                break
            if not row or not row[0]:
                continue
            path = posixpath.normpath(posixpath.join(base, row[0]))
            try:
                os.lstat(self.root.host_path(path))
            except (OSError, ValueError):  # gone, or a NUL in the name
                continue
            found += 1
        with self.lock:
            self.looked_up += found

    def _finish_step(self, entry: _Entry) -> None:
        with entry.lock:
            entry.remaining -= 1
            if entry.remaining == 0 and entry.fd is not None:
                if entry.state == "open" and entry.entry.path.endswith(RECORD_SUFFIX):
                    with contextlib.suppress(OSError):  # its own ranges were warmed
                        self._look_up_record(entry, entry.fd)
                os.close(entry.fd)
                entry.fd = None
                if entry.state == "open":
                    entry.state = "done"

    def close(self) -> None:
        for entry in self.entries:
            if entry.fd is not None:
                os.close(entry.fd)
                entry.fd = None
                if entry.state == "open":
                    entry.state = "done"

    def count(self, *states: str) -> int:
        return sum(1 for e in self.entries if e.state in states)


def replay(
    profile: StartupProfile,
    root: FileRoot,
    *,
    io_depth: int = DEFAULT_IO_DEPTH,
    probe: ResidencyProbe | None = None,
    guard: MemoryGuard | None = None,
    cancel: threading.Event | None = None,
    progress: ReplayProgress | None = None,
    on_progress: Callable[[], None] | None = None,
) -> ReplayResult:
    """Warm ``profile``'s ranges under ``root`` (blocking: run it in a thread)."""
    cancel = cancel or threading.Event()
    progress = progress or ReplayProgress()
    progress.planned_bytes = sum(length for _, _, length in profile.steps())
    run = _Replay(
        profile,
        root,
        probe=probe or ResidencyProbe(),
        guard=guard or MemoryGuard(),
        cancel=cancel,
        progress=progress,
        on_progress=on_progress,
    )
    depth = max(1, io_depth)
    started = time.perf_counter()
    with ThreadPoolExecutor(depth, thread_name_prefix="pagewarm-replay") as pool:
        try:
            for future in [pool.submit(run.worker) for _ in range(depth)]:
                future.result()
        finally:
            run.close()
    return ReplayResult(
        profile=profile.key.name,
        io_depth=depth,
        entries=len(profile.entries),
        replayed_entries=run.count("done"),
        stale_entries=run.count("stale"),
        missing_entries=run.count("missing"),
        failed_entries=run.count("failed"),
        planned_bytes=progress.planned_bytes,
        read_bytes=progress.read_bytes,
        resident_bytes=run.resident_bytes,
        looked_up_paths=run.looked_up,
        seconds=time.perf_counter() - started,
        partial_reason=run.stop_reason or ("cancelled" if cancel.is_set() else None),
        problems=tuple(run.problems),
    )
