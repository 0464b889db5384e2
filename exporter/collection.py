"""Collections shared between scrapes: single flight plus a short max-age cache.

Collecting is blocking work (a stat and a cachestat per file, sysfs, /proc), so it runs on
one dedicated worker thread, never on the event loop. Scrapes that arrive while a
collection is running wait for that one instead of starting their own, and a finished
collection serves every scrape for ``max_age_seconds``: fifty Prometheus servers scraping
at once cost about one collection. The exposition of a collection is rendered once per
format (text 0.0.4 or OpenMetrics, gzipped or not; ``exporter.exposition``) on the same
thread and cached with it.

A scrape that gives up (its client went away, or its timeout passed) does not cancel the
shared collection: the next scrape picks up its result.

Reuse::

    collection = Collection(registry, max_age_seconds=1.0)
    page = await collection.render(accept_header, accept_encoding_header)
    ... page.body, page.content_type, page.content_encoding ...
    collection.close()
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.core import Metric
from prometheus_client.exposition import gzip_accepted
from prometheus_client.registry import Collector

from exporter.exposition import encoder_for

T = TypeVar("T")

# Metrics pages are small (tens to hundreds of KiB); a light level keeps the CPU cost low.
GZIP_LEVEL = 5


@dataclass(frozen=True, slots=True)
class Page:
    """One rendered exposition."""

    body: bytes
    content_type: str
    content_encoding: str | None  # "gzip" or None


@dataclass(slots=True)
class Snapshot:
    """The metric families of one collection, usable as a prometheus_client collector."""

    families: list[Metric]
    started: float  # time.monotonic() when the collection began
    seconds: float
    pages: dict[tuple[str, bool], asyncio.Future[Page]] = field(default_factory=dict)

    def collect(self) -> Iterable[Metric]:
        return self.families

    def age(self) -> float:
        return time.monotonic() - self.started


class Collection:
    """Single-flight, max-age cached collections of ``registry`` (any object with a
    ``collect()``), rendered per format."""

    def __init__(self, registry: Collector, *, max_age_seconds: float = 1.0) -> None:
        self.registry = registry
        self.max_age_seconds = max_age_seconds
        self.collections = 0  # how many collections ran (tests count them)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pagewarm-collect")
        self._snapshot: Snapshot | None = None
        self._inflight: asyncio.Future[Snapshot] | None = None

    async def snapshot(self) -> Snapshot:
        """A collection at most ``max_age_seconds`` old, or the one in flight, or a new one."""
        current = self._snapshot
        if current is not None and current.age() <= self.max_age_seconds:
            return current
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._collect())
            self._inflight.add_done_callback(self._landed)
        # shield: a scrape that gives up must not cancel what the others wait for.
        return await asyncio.shield(self._inflight)

    def _landed(self, future: asyncio.Future[Snapshot]) -> None:
        self._inflight = None
        if not future.cancelled() and future.exception() is None:
            self._snapshot = future.result()

    async def _collect(self) -> Snapshot:
        self.collections += 1
        return await self._off_loop(self._collect_blocking)

    def _collect_blocking(self) -> Snapshot:
        started = time.monotonic()
        families = list(self.registry.collect())
        return Snapshot(families, started, time.monotonic() - started)

    async def render(self, accept: str = "", accept_encoding: str = "") -> Page:
        """The exposition of a fresh-enough collection in the format the client asked for
        (prometheus_client's content negotiation), gzipped when it accepts gzip."""
        snapshot = await self.snapshot()
        encoder, content_type = encoder_for(accept)
        compress = gzip_accepted(accept_encoding)
        key = (content_type, compress)
        page = snapshot.pages.get(key)
        if page is None:
            page = snapshot.pages[key] = asyncio.ensure_future(
                self._off_loop(_render, snapshot, encoder, content_type, compress)
            )
        return await asyncio.shield(page)

    async def _off_loop(self, func: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    def close(self) -> None:
        """Stop taking work; a collection stuck in a syscall is not waited for."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _render(
    snapshot: Snapshot,
    encoder: Callable[[Collector], bytes],
    content_type: str,
    compress: bool,
) -> Page:
    body = encoder(snapshot)
    if compress:
        return Page(gzip.compress(body, GZIP_LEVEL, mtime=0), content_type, "gzip")
    return Page(body, content_type, None)
