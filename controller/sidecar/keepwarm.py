"""Keep-warm (opt-in): while vLLM serves, put back only the ranges of the weights that were
evicted, rate-limited and within the memory budget.

Why: the page cache is not a promise. Memory pressure evicts weights a restarting vLLM will
need, and hosts that run DAMON's pageout scheme (these VMs do) page out file cache that has
not been touched for a minute or so, without any pressure at all: a fully resident model
loses pages while vLLM serves from GPU memory. A crash-restart then loads partly cold.

Each pass asks cachestat(2) for every file's counts (one syscall per file); only a file that
lost pages is scanned window by window, and only the missing windows are read back
(MADV_POPULATE_READ, or preadv where the kernel lacks it). cachestat's recently-evicted
count tells thrash apart from a one-off eviction: when what the last pass brought back is
evicted again, recently, the host is short of memory and re-warming only fights the kernel,
so keep-warm backs off (longer intervals) and says so, until a pass finds little missing.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from controller.linux.pagecache import TRUNCATED_ERRNOS, warm_range
from controller.memguard import MemoryGuard
from controller.prewarm import Strategy, resolve_strategy
from controller.ratelimit import RateLimiter
from controller.units import MiB
from exporter.linux import cachestat
from exporter.linux.files import open_regular
from exporter.residency import Method, ResidencyProbe
from exporter.weightset import WeightSet

# Eviction is found at this granularity (one cachestat per window of a file that lost pages).
WINDOW_BYTES = 2 * MiB
# One re-warm step at most: the rate limit and a cancel act between steps.
MAX_RANGE_BYTES = 16 * MiB
# Thrash: what the last pass brought back (at least this much) is evicted again, recently.
THRASH_MIN_BYTES = 32 * MiB
THRASH_FRACTION = 0.5
# Backing off multiplies the interval by 2 per thrashing pass, up to this factor.
MAX_BACKOFF_FACTOR = 8


@dataclass(frozen=True, slots=True)
class PassResult:
    missing_bytes: int  # not resident when the pass looked
    rewarmed_bytes: int  # brought back by this pass
    recently_evicted_bytes: int | None  # cachestat's count over the files that lost pages
    budget_stop: str | None  # the memory guard refused more
    errors: tuple[str, ...]
    untrusted: bool  # residency cannot be measured truthfully: nothing done
    seconds: float


@dataclass(frozen=True, slots=True)
class _Range:
    offset: int
    length: int
    missing: int


class KeepWarm:
    """One pass at a time (``run_pass`` blocks: call it in a thread)."""

    def __init__(
        self,
        weight_set: WeightSet,
        probe: ResidencyProbe,
        *,
        interval_seconds: float,
        rate_limit_bytes_per_second: float,
        reserve_bytes: int,
        memory_guard: bool,
        cancel: threading.Event,
    ) -> None:
        self.weight_set = weight_set
        self.probe = probe
        self.base_interval = interval_seconds
        self.interval = interval_seconds
        self.limiter = RateLimiter(rate_limit_bytes_per_second)
        self.reserve_bytes = reserve_bytes
        self.memory_guard = memory_guard
        self.cancel = cancel
        self.thrashing = False
        # The same choice as the pre-warm's auto strategy (see controller.prewarm).
        self._buffer = (
            bytearray(MAX_RANGE_BYTES) if resolve_strategy(Strategy.AUTO) is Strategy.READ else None
        )
        self._last_rewarmed = 0

    def run_pass(self) -> PassResult:
        started = time.monotonic()
        guard = MemoryGuard(self.reserve_bytes, enabled=self.memory_guard)
        missing = rewarmed = 0
        recently: int | None = 0
        errors: list[str] = []
        untrusted = False
        for wf in self.weight_set.files:
            if self.cancel.is_set() or guard.refused_reason:
                break
            try:
                with open_regular(wf.path) as fd:
                    found = self._file(fd, guard)
            except OSError as exc:
                errors.append(f"{wf.path}: {exc.strerror or exc}")
                continue
            if found is None:
                untrusted = True
                break
            file_missing, file_rewarmed, file_recent = found
            missing += file_missing
            rewarmed += file_rewarmed
            recently = None if recently is None or file_recent is None else recently + file_recent
        result = PassResult(
            missing,
            rewarmed,
            recently,
            guard.refused_reason,
            tuple(errors),
            untrusted,
            time.monotonic() - started,
        )
        self.adapt(result)
        return result

    def _file(self, fd: int, guard: MemoryGuard) -> tuple[int, int, int | None] | None:
        """(missing, re-warmed, recently evicted) bytes of one file; None when untrusted."""
        size = os.fstat(fd).st_size
        recently: int | None = None
        if self.probe.method is Method.CACHESTAT:
            try:
                counts = cachestat.cachestat(fd)
            except PermissionError:
                return None
            cached = min(size, counts.cached * self.probe.page)
            recently = counts.recently_evicted * self.probe.page
        else:
            measured = self.probe.cached_bytes(fd, 0, size)
            if measured is None:
                return None
            cached = measured
        if cached >= size:
            return 0, 0, 0 if recently is not None else None
        ranges = self._missing_ranges(fd, size)
        if ranges is None:
            return None
        rewarmed = 0
        for rng in ranges:
            if self.cancel.is_set():
                break
            granted = guard.grant_up_to(rng.missing)
            if granted < rng.missing:
                break
            self.limiter.acquire(rng.missing, self.cancel)
            if self.cancel.is_set():
                break
            try:
                warm_range(fd, rng.offset, rng.length, self._buffer)
            except OSError as exc:
                if exc.errno in TRUNCATED_ERRNOS:
                    break  # truncated meanwhile: the next pass sees its new size
                raise
            rewarmed += rng.missing
        return sum(r.missing for r in ranges), rewarmed, recently

    def _missing_ranges(self, fd: int, size: int) -> list[_Range] | None:
        """Windows that are not wholly resident, adjacent ones joined up to MAX_RANGE_BYTES."""
        ranges: list[_Range] = []
        for offset in range(0, size, WINDOW_BYTES):
            length = min(WINDOW_BYTES, size - offset)
            cached = self.probe.cached_bytes(fd, offset, length)
            if cached is None:
                return None
            if cached >= length:
                continue
            last = ranges[-1] if ranges else None
            if (
                last is not None
                and last.offset + last.length == offset
                and last.length + length <= MAX_RANGE_BYTES
            ):
                ranges[-1] = _Range(
                    last.offset, last.length + length, last.missing + length - cached
                )
            else:
                ranges.append(_Range(offset, length, length - cached))
        return ranges

    def adapt(self, result: PassResult) -> None:
        """Back off while what the last pass brought back is evicted again, recently."""
        previous = self._last_rewarmed
        self._last_rewarmed = result.rewarmed_bytes
        again = min(result.missing_bytes, result.recently_evicted_bytes or 0)
        self.thrashing = previous >= THRASH_MIN_BYTES and again >= previous * THRASH_FRACTION
        if self.thrashing:
            self.interval = min(self.interval * 2, self.base_interval * MAX_BACKOFF_FACTOR)
        else:
            self.interval = self.base_interval
