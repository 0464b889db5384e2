"""How much of a weight set is in the page cache, truthfully or not at all.

cachestat(2) first: one syscall a file, with dirty, writeback and eviction counts, and an
honest EPERM where the kernel would lie. Without it (kernel < 6.5, seccomp) mincore(2),
but only for files the kernel reports truthfully to this process; for the others the
figure is unknown, with the reason and the remedy, never "100% resident".
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from exporter.linux import cachestat, mincore, permissions
from exporter.linux.files import NotRegularFileError, open_regular
from exporter.linux.libc import page_size
from exporter.weightset import WeightFile, WeightSet

MethodChoice = Literal["auto", "cachestat", "mincore"]

EMPTY_REASON = "no bytes to measure: every file of the weight set is empty (0 bytes)"


class Method(StrEnum):
    CACHESTAT = "cachestat"
    MINCORE = "mincore"


@dataclass(frozen=True, slots=True)
class FileResidency:
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


def _sum_known(values: Iterator[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


@dataclass(frozen=True, slots=True)
class ModelResidency:
    weight_set: WeightSet
    files: tuple[FileResidency, ...]
    scan_seconds: float = 0.0
    methods: frozenset[Method] = field(default_factory=frozenset)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def trusted(self) -> bool:
        return all(f.trusted for f in self.files)

    @property
    def cached_bytes(self) -> int | None:
        """None when any file's figure is unknown: a partial sum would understate."""
        return _sum_known(f.cached_bytes for f in self.files)

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
    def dirty_bytes(self) -> int | None:
        return _sum_known(f.dirty_bytes for f in self.files)

    @property
    def writeback_bytes(self) -> int | None:
        return _sum_known(f.writeback_bytes for f in self.files)

    @property
    def evicted_bytes(self) -> int | None:
        return _sum_known(f.evicted_bytes for f in self.files)

    @property
    def recently_evicted_bytes(self) -> int | None:
        return _sum_known(f.recently_evicted_bytes for f in self.files)

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

    def file(self, wf: WeightFile, buckets: int = 0) -> FileResidency:
        if self.method is Method.CACHESTAT and self.cachestat_problem:
            return FileResidency(wf, wf.size, None, unknown_reason=self.cachestat_problem)
        try:
            with open_regular(wf.path) as fd:
                return self._measure_open(wf, fd, buckets)
        except NotRegularFileError as exc:
            return FileResidency(wf, wf.size, None, unknown_reason=str(exc))
        except OSError as exc:
            what = "vanished" if exc.errno == errno.ENOENT else f"cannot open: {exc.strerror}"
            return FileResidency(wf, wf.size, None, unknown_reason=what)

    def _measure_open(self, wf: WeightFile, fd: int, buckets: int) -> FileResidency:
        size = os.fstat(fd).st_size
        if self.method is Method.CACHESTAT:
            try:
                counts = cachestat.cachestat(fd)
            except PermissionError:
                return FileResidency(
                    wf, size, None, unknown_reason=permissions.untrusted_reason(fd)
                )
            result = FileResidency(
                wf,
                size,
                self._pages_to_bytes(counts.cached, size),
                Method.CACHESTAT,
                dirty_bytes=counts.dirty * self.page,
                writeback_bytes=counts.writeback * self.page,
                evicted_bytes=counts.evicted * self.page,
                recently_evicted_bytes=counts.recently_evicted * self.page,
            )
        else:
            if not permissions.page_cache_query_trusted(fd):
                return FileResidency(
                    wf, size, None, unknown_reason=permissions.untrusted_reason(fd)
                )
            cached = self._pages_to_bytes(mincore.resident_pages(fd, 0, size), size)
            result = FileResidency(wf, size, cached, Method.MINCORE)
        if buckets:
            return replace(result, buckets=self._bucket_ratios(fd, size, buckets))
        return result

    def _bucket_ratios(self, fd: int, size: int, buckets: int) -> tuple[float, ...]:
        ratios = []
        for offset, length in bucket_ranges(size, buckets, self.page):
            cached = self.cached_bytes(fd, offset, length)
            ratios.append(0.0 if cached is None or length == 0 else cached / length)
        return tuple(ratios)

    def measure(self, weight_set: WeightSet, buckets: int = 0) -> ModelResidency:
        started = time.perf_counter()
        files = tuple(self.file(f, buckets) for f in weight_set.files)
        return ModelResidency(
            weight_set,
            files,
            time.perf_counter() - started,
            frozenset(f.method for f in files if f.method),
        )


def bucket_ranges(size: int, buckets: int, page: int) -> list[tuple[int, int]]:
    """``buckets`` page-aligned (offset, length) ranges covering [0, size)."""
    if size == 0:
        return []
    step = max(page, -(-size // buckets // page) * page)
    return [(off, min(step, size - off)) for off in range(0, size, step)]
