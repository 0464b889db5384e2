"""How much of a weight set is in the page cache, truthfully or not at all.

cachestat(2) first: one syscall a file, with dirty, writeback and eviction counts, and an
honest EPERM where the kernel would lie. Without it (kernel < 6.5, seccomp) mincore(2),
but only for files the kernel reports truthfully to this process; for the others the
figure is unknown, with the reason and the remedy, never "100% resident".
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Literal, NamedTuple, cast

import structlog

from exporter.linux import cachestat, mincore, permissions
from exporter.linux.cachestat import SYSCALL_CACHESTAT
from exporter.linux.files import OPEN_FLAGS, NotRegularFileError, open_regular_fd
from exporter.linux.libc import page_size, raise_errno
from exporter.weightset import WeightFile, WeightSet

if TYPE_CHECKING:  # a scan is only passed through: no import of the scanner at run time
    from exporter.models import ModelScan, WatchedModel

log = structlog.get_logger("pagewarm")

MethodChoice = Literal["auto", "cachestat", "mincore"]

EMPTY_REASON = "no bytes to measure: every file of the weight set is empty (0 bytes)"


class Method(StrEnum):
    CACHESTAT = "cachestat"
    MINCORE = "mincore"


class FileResidency(NamedTuple):
    """One file's page-cache state. A named tuple: a node's collection builds 10,000 of
    them, and a frozen dataclass costs four times as much to build."""

    file: WeightFile
    size: int  # as measured now (fstat), which may differ from the scan's
    cached_bytes: int | None  # None: unknown, see unknown_reason
    method: Method | None = None
    dirty_bytes: int | None = None  # these four only where cachestat gives them
    writeback_bytes: int | None = None
    evicted_bytes: int | None = None
    recently_evicted_bytes: int | None = None
    unknown_reason: str | None = None
    buckets: tuple[float, ...] = ()  # resident ratio of each equal range (status --map)

    @property
    def trusted(self) -> bool:
        return self.cached_bytes is not None

    @property
    def ratio(self) -> float | None:
        """None when unknown, and for an empty file: no page of it can be resident."""
        if self.cached_bytes is None or self.size == 0:
            return None
        return self.cached_bytes / self.size


def _sum_known(values: Sequence[int | None]) -> int | None:
    """The sum, or None when any value is unknown: a partial sum would understate."""
    try:
        return sum(values)  # type: ignore[arg-type]  # a None raises: that is the test
    except TypeError:
        return None


_NO_COLUMNS: tuple[tuple[()], ...] = ((),) * len(FileResidency._fields)


@dataclass(frozen=True, slots=True)
class ModelResidency:
    """A weight set's residency, file by file, with the totals summed once."""

    weight_set: WeightSet
    files: tuple[FileResidency, ...]
    scan_seconds: float = 0.0
    methods: frozenset[Method] = field(default_factory=frozenset)
    size_bytes: int = field(init=False)
    cached_bytes: int | None = field(init=False)  # None when any file's figure is unknown
    dirty_bytes: int | None = field(init=False)
    writeback_bytes: int | None = field(init=False)
    evicted_bytes: int | None = field(init=False)
    recently_evicted_bytes: int | None = field(init=False)

    def __post_init__(self) -> None:
        # Column by column, in FileResidency's field order (zip and sum run in C).
        columns = tuple(zip(*self.files, strict=True)) or _NO_COLUMNS
        _, size, cached, _, dirty, writeback, evicted, recently, _, _ = columns
        totals = {
            "size_bytes": sum(size),
            "cached_bytes": _sum_known(cached),
            "dirty_bytes": _sum_known(dirty),
            "writeback_bytes": _sum_known(writeback),
            "evicted_bytes": _sum_known(evicted),
            "recently_evicted_bytes": _sum_known(recently),
        }
        for name, total in totals.items():
            object.__setattr__(self, name, total)

    @property
    def trusted(self) -> bool:
        return self.cached_bytes is not None

    @property
    def ratio(self) -> float | None:
        """None when unknown, or when there are no bytes to be resident: discovery refuses
        an empty weight set, but its files may all be truncated to 0 by the time they are
        measured. 0 of 0 bytes is not "100% resident"."""
        cached = self.cached_bytes
        if cached is None or self.size_bytes == 0:
            return None
        return cached / self.size_bytes

    @property
    def unknown_reasons(self) -> tuple[str, ...]:
        reasons = dict.fromkeys(f.unknown_reason for f in self.files if f.unknown_reason)
        if self.size_bytes == 0:
            reasons[EMPTY_REASON] = None
        return tuple(r for r in reasons if r)


class ResidencyProbe:
    """Measures residency with one method chosen for the whole process."""

    def __init__(self, method: MethodChoice = "auto") -> None:
        self.choice = method
        self.page = page_size()
        state = cachestat.availability()
        self.cachestat_problem = (
            None
            if state is cachestat.Availability.AVAILABLE
            else cachestat.describe_unavailable(state)
        )
        if method == "mincore" or (method == "auto" and self.cachestat_problem):
            self.method = Method.MINCORE
        else:
            self.method = Method.CACHESTAT
        self._per_thread = threading.local()

    def _pages_to_bytes(self, pages: int, limit: int) -> int:
        return min(pages * self.page, limit)

    def cached_bytes(self, fd: int, offset: int, length: int) -> int | None:
        """Resident bytes of [offset, offset+length) of an open file; None if untrusted.

        ``offset`` must be page-aligned; ``length`` is clamped at the end of the file."""
        if self.method is Method.CACHESTAT:
            try:
                pages = cachestat.cachestat(fd, offset, length).cached
            except PermissionError:
                return None
        else:
            if not permissions.page_cache_query_trusted(fd):
                return None
            pages = mincore.resident_pages(fd, offset, length)
        return self._pages_to_bytes(pages, length)

    def _whole_files(self) -> cachestat.WholeFiles:
        """This thread's cachestat caller (its output buffer is not shared between threads)."""
        whole: cachestat.WholeFiles | None = getattr(self._per_thread, "whole_files", None)
        if whole is None:
            whole = self._per_thread.whole_files = cachestat.WholeFiles()
        return whole

    def file(self, wf: WeightFile, buckets: int = 0) -> FileResidency:
        if self.method is Method.CACHESTAT and self.cachestat_problem:
            return FileResidency(wf, wf.size, None, unknown_reason=self.cachestat_problem)
        try:
            fd, st = open_regular_fd(wf.path)
        except OSError as exc:
            return _unopened(wf, exc)
        try:
            if self.method is Method.CACHESTAT:
                result = self._cachestat_open(wf, fd, st.st_size, self._whole_files())
            else:
                result = self._mincore_open(wf, fd, st.st_size)
            if buckets and result.trusted:
                return result._replace(buckets=self._bucket_ratios(fd, st.st_size, buckets))
            return result
        finally:
            os.close(fd)

    def _cachestat_open(
        self, wf: WeightFile, fd: int, size: int, whole: cachestat.WholeFiles
    ) -> FileResidency:
        try:
            counts = whole(fd)
        except PermissionError:
            return FileResidency(wf, size, None, unknown_reason=permissions.untrusted_reason(fd))
        page = self.page
        return FileResidency(
            wf,
            size,
            min(counts.cached * page, size),
            Method.CACHESTAT,
            counts.dirty * page,
            counts.writeback * page,
            counts.evicted * page,
            counts.recently_evicted * page,
        )

    def _mincore_open(self, wf: WeightFile, fd: int, size: int) -> FileResidency:
        if not permissions.page_cache_query_trusted(fd):
            return FileResidency(wf, size, None, unknown_reason=permissions.untrusted_reason(fd))
        cached = self._pages_to_bytes(mincore.resident_pages(fd, 0, size), size)
        return FileResidency(wf, size, cached, Method.MINCORE)

    def _cachestat_all(self, weight_set: WeightSet) -> list[FileResidency]:
        """``file`` for every file of a weight set, as one loop with no call but the
        syscalls' and nothing built but the results (what ``file`` does through helpers,
        inlined): the loop a node's collection runs over 10,000 files and a keep-warm pass
        over 1,000 every 30 s (its cost is held next to the bare syscalls' by
        bench/exporter_bench.py and bench/node_bench.py)."""
        whole = self._whole_files()
        syscall, args, out = whole.syscall, whole.args, whole.out
        page, method = self.page, Method.CACHESTAT
        open_, fstat, close, is_regular = os.open, os.fstat, os.close, stat.S_ISREG
        results: list[FileResidency] = []
        append = results.append
        for wf, path in zip(weight_set.files, weight_set.path_strings, strict=True):
            try:
                fd = open_(path, OPEN_FLAGS)
                try:
                    st = fstat(fd)
                except OSError:
                    close(fd)
                    raise
            except OSError as exc:
                append(_unopened(wf, exc))
                continue
            try:
                size = st.st_size
                if not is_regular(st.st_mode):
                    append(_unopened(wf, NotRegularFileError(f"{path} is not a regular file")))
                elif syscall(SYSCALL_CACHESTAT, fd, *args) == 0:
                    append(
                        _new_file_residency(
                            (
                                wf,
                                size,
                                min(out.nr_cache * page, size),
                                method,
                                out.nr_dirty * page,
                                out.nr_writeback * page,
                                out.nr_evicted * page,
                                out.nr_recently_evicted * page,
                                None,
                                (),
                            )
                        )
                    )
                else:
                    append(_refused(wf, fd, size))
            finally:
                close(fd)
        return results

    def _bucket_ratios(self, fd: int, size: int, buckets: int) -> tuple[float, ...]:
        ratios = []
        for offset, length in bucket_ranges(size, buckets, self.page):
            cached = self.cached_bytes(fd, offset, length)
            ratios.append(0.0 if cached is None or length == 0 else cached / length)
        return tuple(ratios)

    def measure(self, weight_set: WeightSet, buckets: int = 0) -> ModelResidency:
        """Every file of the weight set: one open, fstat, cachestat and close each (mincore
        over the whole file where cachestat is missing), plus ``buckets`` range counts."""
        started = time.perf_counter()
        if self.method is Method.CACHESTAT and not self.cachestat_problem and not buckets:
            files = tuple(self._cachestat_all(weight_set))
        else:
            files = tuple([self.file(f, buckets) for f in weight_set.files])
        return ModelResidency(
            weight_set,
            files,
            time.perf_counter() - started,
            frozenset({f.method for f in files if f.method}),
        )


@dataclass(frozen=True, slots=True)
class ScanResidency:
    """One residency pass over a model scan: each file of each model measured once."""

    models: tuple[tuple[WatchedModel, ModelResidency], ...]
    failed: tuple[tuple[str, str], ...]  # (model, error): measuring it raised
    seconds: float


def measure_scan(probe: ResidencyProbe, scan: ModelScan) -> ScanResidency:
    """Every model of ``scan`` that has a weight set, file by file (the exporter's
    residency collector and a keep-warm pass share this: the kernel work of a pass is one
    open, fstat, cachestat and close per file)."""
    started = time.perf_counter()
    measured: list[tuple[WatchedModel, ModelResidency]] = []
    failed: list[tuple[str, str]] = []
    for model, weight_set in scan.available:
        try:
            measured.append((model, probe.measure(weight_set)))
        except Exception as exc:  # one model must not hide the others
            log.warning("residency failed", model=model.name, error=str(exc), exc_info=exc)
            failed.append((model.name, str(exc)))
    return ScanResidency(tuple(measured), tuple(failed), time.perf_counter() - started)


# A FileResidency from its ten fields, in order, without the named tuple's Python-level
# __new__ (a Python call per file, dearer than the tuple it builds; _make checks the
# length in Python too). The loop passes all ten.
_new_file_residency = cast(
    "Callable[[tuple[object, ...]], FileResidency]", partial(tuple.__new__, FileResidency)
)


def _refused(wf: WeightFile, fd: int, size: int) -> FileResidency:
    """cachestat failed on an open regular file: EPERM is the kernel refusing to say
    (unknown, with the reason); anything else is raised."""
    if ctypes.get_errno() != errno.EPERM:
        raise_errno("cachestat")
    return FileResidency(wf, size, None, unknown_reason=permissions.untrusted_reason(fd))


def _unopened(wf: WeightFile, exc: OSError) -> FileResidency:
    if isinstance(exc, NotRegularFileError):
        reason = str(exc)
    elif exc.errno == errno.ENOENT:
        reason = "vanished"
    else:
        reason = f"cannot open: {exc.strerror}"
    return FileResidency(wf, wf.size, None, unknown_reason=reason)


def bucket_ranges(size: int, buckets: int, page: int) -> list[tuple[int, int]]:
    """``buckets`` page-aligned (offset, length) ranges covering [0, size)."""
    if size == 0:
        return []
    step = max(page, -(-size // buckets // page) * page)
    return [(off, min(step, size - off)) for off in range(0, size, step)]
