"""Single flight and the max-age cache: scrapes counted in collections, not in time."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterable

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

from exporter.collection import Collection

OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0"
PATIENCE_SECONDS = 30  # generous: these tests count, they do not time


class GatedRegistry:
    """A collector whose collections block until released, and are counted."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def collect(self) -> Iterable[Metric]:
        self.calls += 1
        self.started.set()
        if not self.release.wait(PATIENCE_SECONDS):
            raise TimeoutError("never released")
        if self.fail:
            raise RuntimeError("collection broke")
        family = GaugeMetricFamily("pagewarm_test_calls", "Collections so far.")
        family.add_metric([], self.calls)
        return [family]


async def _until_started(registry: GatedRegistry) -> None:
    assert await asyncio.to_thread(registry.started.wait, PATIENCE_SECONDS)
    for _ in range(5):  # let every scrape task reach its await
        await asyncio.sleep(0)


def test_fifty_concurrent_scrapes_share_one_collection() -> None:
    async def scenario() -> None:
        registry = GatedRegistry()
        collection = Collection(registry, max_age_seconds=0)
        scrapes = [asyncio.ensure_future(collection.render()) for _ in range(50)]
        await _until_started(registry)
        registry.release.set()
        pages = await asyncio.gather(*scrapes)
        collection.close()
        assert registry.calls == 1
        assert collection.collections == 1
        assert len({id(p) for p in pages}) == 1  # rendered once, too
        assert b"pagewarm_test_calls 1.0" in pages[0].body

    asyncio.run(scenario())


def test_max_age_serves_a_recent_collection_and_zero_does_not() -> None:
    async def scrape_twice(max_age: float) -> int:
        registry = GatedRegistry()
        registry.release.set()
        collection = Collection(registry, max_age_seconds=max_age)
        await collection.render()
        await collection.render()
        collection.close()
        return registry.calls

    assert asyncio.run(scrape_twice(3600)) == 1
    assert asyncio.run(scrape_twice(0)) == 2


def test_a_scrape_that_gives_up_does_not_cancel_the_shared_collection() -> None:
    async def scenario() -> None:
        registry = GatedRegistry()
        collection = Collection(registry, max_age_seconds=3600)
        impatient = asyncio.ensure_future(collection.render())
        await _until_started(registry)
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        registry.release.set()
        page = await collection.render()
        collection.close()
        assert registry.calls == 1
        assert b"pagewarm_test_calls 1.0" in page.body

    asyncio.run(scenario())


def test_a_failed_collection_reaches_every_waiter_and_is_not_cached() -> None:
    async def scenario() -> None:
        registry = GatedRegistry(fail=True)
        collection = Collection(registry, max_age_seconds=3600)
        scrapes = [asyncio.ensure_future(collection.render()) for _ in range(3)]
        await _until_started(registry)
        registry.release.set()
        results = await asyncio.gather(*scrapes, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        registry.fail = False
        page = await collection.render()
        collection.close()
        assert registry.calls == 2
        assert b"pagewarm_test_calls 2.0" in page.body

    asyncio.run(scenario())


def test_formats_are_negotiated_and_gzip_is_honoured() -> None:
    async def scenario() -> None:
        registry = GatedRegistry()
        registry.release.set()
        collection = Collection(registry, max_age_seconds=3600)
        text = await collection.render("text/plain", "")
        openmetrics = await collection.render(OPENMETRICS_ACCEPT, "")
        zipped = await collection.render("", "gzip, deflate")
        again = await collection.render("text/plain", "")
        collection.close()
        assert text.content_type == CONTENT_TYPE_PLAIN_0_0_4
        assert text.content_encoding is None
        assert openmetrics.content_type.startswith(OPENMETRICS.split(";")[0])
        assert openmetrics.body.endswith(b"# EOF\n")
        assert zipped.content_encoding == "gzip"
        assert gzip.decompress(zipped.body) == text.body
        assert again is text
        assert registry.calls == 1

    asyncio.run(scenario())
