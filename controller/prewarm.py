"""Pre-warm: put a weight set into the page cache as fast as the storage allows.

Files are taken in the order a loader reads them and cut into chunks; worker threads take
chunks in that order, so when the memory budget stops the warm, what is resident is the
beginning of the load. Only what is missing is read: each step asks the page cache first.

Strategies:
- ``populate``: mmap + madvise(MADV_POPULATE_READ) (Linux 5.14+). The kernel reads with its
  readahead machinery and copies nothing to user space.
- ``read``: preadv into one reused buffer per thread; works everywhere.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from controller.filechange import FileChange, change_since_found
from controller.linux.pagecache import TRUNCATED_ERRNOS, populate_supported, warm_range
from controller.memguard import MemoryGuard
from controller.prewarm_result import FileError, PrewarmResult, Strategy
from controller.ratelimit import RateLimiter
from controller.units import MiB
from exporter.linux.files import NotRegularFileError, open_regular
from exporter.linux.hypervisor import VIRTIO_DEVICES, free_page_reporting
from exporter.residency import ResidencyProbe
from exporter.weightset import WeightFile, WeightSet

DEFAULT_THREADS = 8
DEFAULT_CHUNK_BYTES = 64 * MiB
# One syscall moves at most this much: fine-grained enough for rate limiting, cancelling
# and progress, coarse enough that syscall overhead does not show.
STEP_BYTES = 16 * MiB
# The read strategy's per-thread buffer is anonymous memory, charged like the page cache:
# kept small, and taken from the memory budget before the warm starts.
READ_STEP_BYTES = 4 * MiB
PAGE = os.sysconf("SC_PAGE_SIZE")
RATE_LIMITED_STEP_BYTES = 2 * MiB
# The read strategy's thread buffers take at most this share of the memory budget: the rest
# is for the page cache, so a warm always makes progress where any budget exists.
BUFFER_BUDGET_DIVISOR = 4

__all__ = ["FileError", "PrewarmResult", "Strategy"]


def choose_strategy(
    strategy: Strategy, *, virtio_devices: Path = VIRTIO_DEVICES
) -> tuple[Strategy, str]:
    """The strategy to run for a requested one, and why (auto decides per machine)."""
    if strategy is not Strategy.AUTO:
        return strategy, "requested"
    if not populate_supported():
        return Strategy.READ, "MADV_POPULATE_READ needs Linux 5.14+"
    if free_page_reporting(virtio_devices):
        # Populated pages would be first touched by the loader, which then pays a host
        # fault per page; reading through the CPU takes those faults during the warm.
        return Strategy.READ, "VM guest with free page reporting (virtio balloon)"
    return Strategy.POPULATE, "MADV_POPULATE_READ available"


def resolve_strategy(strategy: Strategy) -> Strategy:
    return choose_strategy(strategy)[0]


@dataclass(frozen=True, slots=True)
class PrewarmOptions:
    strategy: Strategy = Strategy.AUTO
    threads: int = DEFAULT_THREADS
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    only_missing: bool = True
    rate_limit_bytes_per_second: float | None = None
    # False: the kernel reads exactly the ranges asked for (POSIX_FADV_RANDOM on our own
    # descriptors), so that a warm at a small I/O depth keeps as little in flight as it asks
    # for: readahead would queue up to read_ahead_kb behind every read.
    readahead: bool = True


@dataclass(slots=True)
class PrewarmProgress:
    """Shared, live state of a running warm (read by progress bars and the sidecar)."""

    planned_bytes: int  # the whole set; what is already resident is skipped on the way
    done_bytes: int = 0  # read plus found resident
    read_bytes: int = 0
    files_total: int = 0
    files_done: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed_seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def fraction(self) -> float:
        return 1.0 if self.planned_bytes == 0 else min(1.0, self.done_bytes / self.planned_bytes)


class _OpenFile:
    """A file being warmed: closed when every chunk has been handed out and finished."""

    def __init__(
        self,
        wf: WeightFile,
        fd: int,
        closer: contextlib.ExitStack,
        missing_by_chunk: dict[int, int],
    ) -> None:
        self.wf = wf
        self.fd = fd
        self.closer = closer
        opened = os.fstat(fd)
        self.size = opened.st_size  # now, not when the weight set was found
        self.identity = (opened.st_dev, opened.st_ino)
        self.next_offset = 0
        self.in_flight = 0
        self.failed: str | None = None
        # Bytes of each chunk (by offset) that were not resident when the file was opened,
        # before any of its chunks was touched: readahead triggered by one chunk fills the
        # next, so asking later would hide bytes this warm brought in from the budget.
        self.missing_by_chunk = missing_by_chunk

    @property
    def exhausted(self) -> bool:
        return self.failed is not None or self.next_offset >= self.size


@dataclass(slots=True)
class _Chunk:
    file: _OpenFile
    offset: int
    length: int


class _Run:
    """One pre-warm: chunks handed out in load order, the workers, the bookkeeping."""

    def __init__(
        self,
        weight_set: WeightSet,
        *,
        options: PrewarmOptions,
        probe: ResidencyProbe,
        guard: MemoryGuard,
        progress: PrewarmProgress,
        on_progress: Callable[[PrewarmProgress], None] | None,
        cancel: threading.Event,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.options = options
        self.strategy, self.strategy_reason = choose_strategy(options.strategy)
        self.probe = probe
        self.guard = guard
        self.progress = progress
        self.on_progress = on_progress
        self.cancel = cancel
        self.limiter = limiter or RateLimiter(options.rate_limit_bytes_per_second)
        if options.rate_limit_bytes_per_second:
            self.step = RATE_LIMITED_STEP_BYTES
        else:
            self.step = READ_STEP_BYTES if self.strategy is Strategy.READ else STEP_BYTES
        # No more readers than chunks to read: the rest would only hold buffers and stacks.
        chunks = sum(-(-f.size // options.chunk_bytes) for f in weight_set.files)
        self.threads = self._threads_within_budget(max(1, min(options.threads, chunks)))
        self.lock = threading.Lock()
        self.errors: list[FileError] = []
        self.changes: list[FileChange] = []
        self.stop_reason: str | None = None
        self.skipped_bytes = 0
        self._pending_files = list(reversed(weight_set.files))
        self._current: _OpenFile | None = None

    def _threads_within_budget(self, wanted: int) -> int:
        """Fewer readers, and smaller buffers, when their buffers would take more than their
        share of the budget (read strategy): at least one reader, the rest for the cache."""
        budget = self.guard.budget_bytes
        if self.strategy is not Strategy.READ or budget is None:
            return wanted
        share = budget // BUFFER_BUDGET_DIVISOR
        self.step = min(self.step, max(PAGE, share // PAGE * PAGE))
        threads = max(1, min(wanted, share // self.step))
        self.guard.grant_up_to(threads * self.step)
        return threads

    # Everything named *_locked runs with self.lock held.
    def _error_locked(self, path: Path, error: str) -> None:
        self.errors.append(FileError(str(path), error))

    def _open_next_locked(self) -> _OpenFile | None:
        while self._pending_files:
            wf = self._pending_files.pop()
            closer = contextlib.ExitStack()  # the file stays open across chunks and threads
            try:
                fd = closer.enter_context(open_regular(wf.path))
            except NotRegularFileError:
                error = "no longer a regular file"
            except OSError as exc:
                error = f"cannot open: {exc.strerror or exc}"
            else:
                return self._opened_locked(wf, fd, closer)
            self._error_locked(wf.path, error)
            self.progress.files_done += 1
        return None

    def _opened_locked(self, wf: WeightFile, fd: int, closer: contextlib.ExitStack) -> _OpenFile:
        """The file as it is now: a change since the weight set was found is recorded, and
        the warm (and the plan's size) follow the file that is there."""
        if not self.options.readahead:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        opened = _OpenFile(wf, fd, closer, self._missing_by_chunk(fd))
        change = change_since_found(wf, os.fstat(fd))
        if change is not None:
            self.changes.append(change)
            self.progress.planned_bytes += change.size_delta
        return opened

    def _missing_by_chunk(self, fd: int) -> dict[int, int]:
        size = os.fstat(fd).st_size
        missing = {}
        for offset in range(0, size, self.options.chunk_bytes):
            length = min(self.options.chunk_bytes, size - offset)
            cached = self.probe.cached_bytes(fd, offset, length)
            missing[offset] = length if cached is None else length - cached
        return missing

    def _finish_locked(self, opened: _OpenFile) -> None:
        opened.closer.close()
        self.progress.files_done += 1
        if opened.failed:
            self._error_locked(opened.wf.path, opened.failed)
            return
        try:
            st = opened.wf.path.stat()
        except OSError:
            self._error_locked(opened.wf.path, "deleted during the warm")
            return
        if (st.st_dev, st.st_ino) != opened.identity:
            self._error_locked(opened.wf.path, "replaced during the warm: a new file has its name")

    def next_chunk(self) -> _Chunk | None:
        with self.lock:
            while not (self.stop_reason or self.cancel.is_set()):
                current = self._current
                if current is None or current.exhausted:
                    if current is not None and current.in_flight == 0:
                        self._finish_locked(current)
                    current = self._current = self._open_next_locked()
                    if current is None:
                        return None
                    continue
                offset = current.next_offset
                length = min(self.options.chunk_bytes, current.size - offset)
                current.next_offset += length
                current.in_flight += 1
                return _Chunk(current, offset, length)
            return None

    def release(self, chunk: _Chunk) -> None:
        with self.lock:
            chunk.file.in_flight -= 1
            if (
                chunk.file.in_flight == 0
                and chunk.file.exhausted
                and chunk.file is not self._current
            ):
                self._finish_locked(chunk.file)

    def close_remaining(self) -> None:
        """After the workers stopped (done, cancelled or out of budget)."""
        with self.lock:
            if self._current is not None:
                self._finish_locked(self._current)
                self._current = None

    def worker(self) -> None:
        buffer = bytearray(self.step) if self.strategy is Strategy.READ else None
        while (chunk := self.next_chunk()) is not None:
            try:
                self._warm_chunk(chunk, buffer)
            finally:
                self.release(chunk)

    def _resident(self, chunk: _Chunk, offset: int, length: int) -> bool:
        if not self.options.only_missing:
            return False
        return self.probe.cached_bytes(chunk.file.fd, offset, length) == length

    def _grant(self, chunk: _Chunk) -> tuple[int, int]:
        """(bytes this chunk brings in, bytes of the chunk to warm) within the budget."""
        missing = chunk.file.missing_by_chunk.get(chunk.offset, chunk.length)
        granted = self.guard.grant_up_to(missing)
        if granted < missing:
            with self.lock:
                self.stop_reason = self.stop_reason or self.guard.refused_reason
            # Warm the prefix the rest of the budget covers (whole pages: less than a page
            # of budget brings nothing in).
            whole_pages = granted // PAGE * PAGE
            return whole_pages, whole_pages
        return missing, chunk.length

    def _warm_chunk(self, chunk: _Chunk, buffer: bytearray | None) -> None:
        brought_in, length_to_warm = self._grant(chunk)
        end = chunk.offset + length_to_warm
        # The rate limit is on bytes brought in from storage. Readahead fills ranges ahead
        # of the one touched, so every step pays its share, resident by then or not.
        share = brought_in / length_to_warm if length_to_warm else 0.0
        done = 0
        # A budget stop elsewhere lets granted chunks finish; a cancel or a broken file not.
        for offset in range(chunk.offset, end, self.step):
            if chunk.file.failed or self.cancel.is_set():
                break
            length = min(self.step, end - offset)
            self.limiter.acquire(round(length * share), self.cancel)
            if not self._resident(chunk, offset, length):
                try:
                    warm_range(chunk.file.fd, offset, length, buffer)
                except OSError as exc:
                    self._file_broke(chunk.file, exc)
                    break
            done += length
            self._advance(length)
        # Bytes brought in, pro rata when the chunk was cut short.
        read = brought_in if done == length_to_warm else brought_in * done // max(1, length_to_warm)
        self._account(read=read, skipped=done - read if done >= read else 0)

    def _file_broke(self, opened: _OpenFile, exc: OSError) -> None:
        if exc.errno in TRUNCATED_ERRNOS:
            reason = "truncated during the warm"
        else:
            reason = f"read failed: {exc.strerror or exc}"
        with self.lock:
            if opened.failed is None:
                opened.failed = reason

    def _account(self, read: int, skipped: int) -> None:
        """Bytes this warm brings into the page cache, and bytes that were there before."""
        with self.lock:
            self.progress.read_bytes += read
            self.skipped_bytes += skipped

    def _advance(self, done: int) -> None:
        with self.lock:
            self.progress.done_bytes += done
        if self.on_progress is not None:
            self.on_progress(self.progress)


def prewarm(
    weight_set: WeightSet,
    options: PrewarmOptions | None = None,
    *,
    probe: ResidencyProbe | None = None,
    guard: MemoryGuard | None = None,
    on_progress: Callable[[PrewarmProgress], None] | None = None,
    cancel: threading.Event | None = None,
    progress: PrewarmProgress | None = None,
    limiter: RateLimiter | None = None,
) -> PrewarmResult:
    """Warm ``weight_set`` (blocking: run it in a thread from async code). A ``limiter``
    shared between runs holds their sum to one rate (the node agent's re-warms)."""
    options = options or PrewarmOptions()
    probe = probe or ResidencyProbe()
    guard = guard or MemoryGuard()
    cancel = cancel or threading.Event()
    before = probe.measure(weight_set)
    progress = progress or PrewarmProgress(planned_bytes=weight_set.total_bytes)
    progress.planned_bytes = weight_set.total_bytes
    progress.files_total = len(weight_set.files)
    run = _Run(
        weight_set,
        options=options,
        probe=probe,
        guard=guard,
        progress=progress,
        on_progress=on_progress,
        cancel=cancel,
        limiter=limiter,
    )
    started = time.perf_counter()
    with ThreadPoolExecutor(run.threads, thread_name_prefix="prewarm") as pool:
        try:
            for future in [pool.submit(run.worker) for _ in range(run.threads)]:
                future.result()
        finally:
            run.close_remaining()
    seconds = time.perf_counter() - started
    partial = run.stop_reason or ("cancelled" if cancel.is_set() else None)
    failure = None
    if run.stop_reason and progress.read_bytes == 0:
        # Stopped by the budget before a single byte: no warm at all, never a "partial" one.
        failure, partial = f"no memory budget to warm anything: {run.stop_reason}", None
    return PrewarmResult(
        model_path=str(weight_set.root),
        strategy=run.strategy,
        strategy_reason=run.strategy_reason,
        threads=run.threads,
        size_bytes=weight_set.total_bytes + sum(c.size_delta for c in run.changes),
        resident_before_bytes=before.cached_bytes,
        read_bytes=progress.read_bytes,
        skipped_resident_bytes=run.skipped_bytes,
        seconds=seconds,
        budget_bytes=guard.budget_bytes,
        partial_reason=partial,
        file_errors=tuple(run.errors),
        after=probe.measure(weight_set),
        changed_files=tuple(run.changes),
        failure_reason=failure,
    )
