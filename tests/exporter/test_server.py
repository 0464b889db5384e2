"""The HTTP server in-process, on a real loopback port: the sidecar's reuse API, single
flight over HTTP, bounded requests, slow clients, scrape timeouts, content negotiation."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine
from aiohttp.typedefs import Handler
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.models import ModelSpec
from exporter.requestlog import MAX_ERROR_CHARS, RequestErrorLog
from exporter.server import create_app, serve
from exporter.settings import ExporterSettings
from tests.exporter.test_collection import PATIENCE_SECONDS, GatedRegistry
from tests.support import write_random


@asynccontextmanager
async def serving(app: web.Application, idle_timeout: float = 15.0) -> AsyncIterator[int]:
    """Serve ``app`` on a free loopback port (yielded) until the block ends."""
    stop = asyncio.Event()
    listening: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            app,
            host="127.0.0.1",
            port=0,
            idle_timeout_seconds=idle_timeout,
            shutdown=stop,
            handle_signals=False,
            on_listening=listening.set_result,
        )
    )
    addresses = await asyncio.wait_for(listening, PATIENCE_SECONDS)
    try:
        yield addresses[0][1]
    finally:
        stop.set()
        await task


async def _raw(port: int, request: bytes) -> bytes:
    """Send raw bytes (no client-side path normalisation) and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), PATIENCE_SECONDS)
    writer.close()
    return answer


# Requests aiohttp cannot parse, as scanners and confused clients send them.
MALFORMED_REQUESTS = (
    b"GARBAGE\r\n\r\n",  # not a method
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64),  # TLS on the plain port
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET /metrics HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",  # a request line too long
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
)


def _settings(tmp_path: Path, **overrides: object) -> ExporterSettings:
    return ExporterSettings(samples=tmp_path / "samples.jsonl", **overrides)  # type: ignore[arg-type]


class GateCollector:
    """What a sidecar adds: its own state as metrics."""

    name = "sidecar"

    def __init__(self) -> None:
        self.open = False

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("pagewarm_sidecar_gate_open", "1 once the gate is open.")
        family.add_metric([], 1.0 if self.open else 0.0)
        return [family]


def test_the_sidecar_adds_routes_and_collectors_on_the_same_port(tmp_path: Path) -> None:
    model = tmp_path / "m"
    write_random(model / "model.safetensors", 64 << 10)
    gate = GateCollector()

    async def startup(request: web.Request) -> web.Response:
        return web.Response(status=200 if gate.open else 503, text="gate\n")

    async def scenario() -> None:
        app = create_app(
            _settings(tmp_path, collection_max_age_seconds=0),
            [ModelSpec(model, "m")],
            extra_collectors=[gate],
            extra_routes=[web.get("/startup", startup)],
        )
        async with serving(app) as port, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            async with http.get(f"{base}/startup") as response:
                assert response.status == 503
            gate.open = True
            async with http.get(f"{base}/startup") as response:
                assert response.status == 200
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
            async with http.get(f"{base}/") as response:
                landing = await response.text()
            async with http.get(f"{base}/healthz") as response:
                assert (response.status, await response.text()) == (200, "ok\n")
        assert "pagewarm_sidecar_gate_open 1.0" in text
        assert 'pagewarm_collector_success{collector="sidecar"} 1.0' in text
        assert 'pagewarm_model_size_bytes{model="m"} 65536.0' in text
        assert 'href="/startup"' in landing
        assert 'href="/metrics"' in landing

    asyncio.run(scenario())


def test_fifty_concurrent_http_scrapes_cost_one_collection(tmp_path: Path) -> None:
    registry = GatedRegistry()
    arrived = 0

    @web.middleware
    async def count_arrivals(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal arrived
        arrived += 1
        if arrived == 50:  # every scrape is in: now let the one collection finish
            registry.release.set()
        return await handler(request)

    async def scenario() -> None:
        app = create_app(_settings(tmp_path, collection_max_age_seconds=0), registry=registry)
        app.middlewares.append(count_arrivals)
        connector = aiohttp.TCPConnector(limit=0)
        async with serving(app) as port, aiohttp.ClientSession(connector=connector) as http:

            async def scrape() -> str:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    return await response.text()

            bodies = await asyncio.gather(*(scrape() for _ in range(50)))
        assert registry.calls == 1
        assert {b.count("pagewarm_test_calls 1.0") for b in bodies} == {1}

    asyncio.run(scenario())


def test_no_request_path_reaches_the_filesystem(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = create_app(_settings(tmp_path), registry=GatedRegistry())
        async with serving(app) as port:
            for target in (
                "/../../../../etc/passwd",
                "/metrics/../../../etc/passwd",
                "/%2e%2e/%2e%2e/etc/passwd",
                "//etc/passwd",
                "/etc/passwd",
                "/static/../pyproject.toml",
            ):
                answer = await _raw(
                    port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                )
                status = answer.split(b" ", 2)[1]
                assert status in (b"400", b"404"), (target, answer[:200])
                assert b"root:" not in answer
                assert b"[project]" not in answer

    asyncio.run(scenario())


def test_requests_are_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = create_app(_settings(tmp_path), registry=GatedRegistry())
        async with serving(app) as port, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            async with http.post(f"{base}/metrics", data=io.BytesIO(bytes(4 << 20))) as response:
                assert response.status == 405
            async with http.delete(f"{base}/") as response:
                assert response.status == 405
            long_header = "a" * 20000
            answer = await _raw(
                port,
                f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: {long_header}\r\n\r\n".encode(),
            )
            assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:200]

    asyncio.run(scenario())


def test_idle_and_slow_clients_are_disconnected(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = create_app(_settings(tmp_path), registry=GatedRegistry())
        async with serving(app, idle_timeout=0.5) as port:
            # A client trickling its request and never finishing it.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), PATIENCE_SECONDS) == b""
            writer.close()
            # A client that connects and says nothing.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(), PATIENCE_SECONDS) == b""
            writer.close()

    asyncio.run(scenario())


def test_a_slow_collection_answers_503_and_the_next_scrape_gets_it(tmp_path: Path) -> None:
    registry = GatedRegistry()

    async def scenario() -> None:
        settings = _settings(tmp_path, scrape_timeout_seconds=0.2)
        app = create_app(settings, registry=registry)
        async with serving(app) as port, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/metrics"
            async with http.get(url) as response:
                assert response.status == 503
                assert "did not finish" in await response.text()
            # Prometheus's own (shorter) timeout header is honoured too.
            async with http.get(
                url, headers={"X-Prometheus-Scrape-Timeout-Seconds": "0.4"}
            ) as response:
                assert response.status == 503
            registry.release.set()
            await asyncio.to_thread(registry.started.wait, PATIENCE_SECONDS)
            deadline = asyncio.get_running_loop().time() + PATIENCE_SECONDS
            status = 503
            while status == 503 and asyncio.get_running_loop().time() < deadline:
                async with http.get(url) as response:
                    status, text = response.status, await response.text()
            assert status == 200
        assert "pagewarm_test_calls 1.0" in text
        assert registry.calls == 1

    asyncio.run(scenario())


def test_content_negotiation_and_gzip_over_http(tmp_path: Path) -> None:
    registry = GatedRegistry()
    registry.release.set()

    async def scenario() -> None:
        app = create_app(_settings(tmp_path), registry=registry)
        async with serving(app) as port, aiohttp.ClientSession(auto_decompress=False) as http:
            url = f"http://127.0.0.1:{port}/metrics"
            headers = {
                "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
                "Accept-Encoding": "gzip",
            }
            async with http.get(url, headers=headers) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                assert response.headers["Content-Encoding"] == "gzip"
                body = gzip.decompress(await response.read())
            assert body.endswith(b"# EOF\n")
            async with http.get(url, headers={"Accept-Encoding": "identity"}) as response:
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert "Content-Encoding" not in response.headers
                assert b"pagewarm_test_calls 1.0" in await response.read()
            async with http.head(url) as response:
                assert response.status == 200
                assert await response.read() == b""

    asyncio.run(scenario())


def test_shutdown_lets_a_scrape_in_flight_finish(tmp_path: Path) -> None:
    registry = GatedRegistry()

    async def scenario() -> None:
        stop = asyncio.Event()
        listening: asyncio.Future[list[tuple[str, int]]] = (
            asyncio.get_running_loop().create_future()
        )
        app = create_app(_settings(tmp_path), registry=registry)
        server = asyncio.create_task(
            serve(
                app,
                host="127.0.0.1",
                port=0,
                shutdown=stop,
                handle_signals=False,
                on_listening=listening.set_result,
            )
        )
        port = (await listening)[0][1]
        async with aiohttp.ClientSession() as http:
            scrape = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/metrics"))
            await asyncio.to_thread(registry.started.wait, PATIENCE_SECONDS)
            stop.set()  # SIGTERM's effect, while the scrape waits for its collection
            await asyncio.sleep(0.1)
            registry.release.set()
            async with await scrape as response:
                assert response.status == 200
                assert "pagewarm_test_calls 1.0" in await response.text()
        await asyncio.wait_for(server, PATIENCE_SECONDS)
        with pytest.raises(aiohttp.ClientConnectorError):  # and then nothing listens
            async with aiohttp.ClientSession() as http:
                await http.get(f"http://127.0.0.1:{port}/healthz")

    asyncio.run(scenario())


def test_malformed_requests_are_one_short_warning_per_interval() -> None:
    now = [100.0]
    errors = RequestErrorLog(interval_seconds=60.0, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logged:
        for _ in range(5):
            errors.exception(
                "Error handling request from %s",
                "10.0.0.7",
                exc_info=BadStatusLine("\x16\x03\x01" + "x" * 5000),
            )
        now[0] += 59.0
        errors.debug("Error handling request from %s", "10.0.0.8", exc_info=BadHttpMethod("X"))
        now[0] += 1.0
        errors.exception("Error handling request from %s", "10.0.0.9", exc_info=BadStatusLine("y"))
    assert [(e["event"], e["log_level"], e["peer"], e["suppressed"]) for e in logged] == [
        ("malformed request refused", "warning", "10.0.0.7", 0),
        ("malformed request refused", "warning", "10.0.0.9", 5),
    ]
    assert len(logged[0]["error"]) <= MAX_ERROR_CHARS
    assert logged[0]["error"].startswith("BadStatusLine: Bad status line")


def test_malformed_requests_get_400_and_no_traceback_but_handler_bugs_keep_theirs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug in a pagewarm handler")

    async def scenario() -> None:
        app = create_app(
            _settings(tmp_path), registry=GatedRegistry(), extra_routes=[web.get("/bug", broken)]
        )
        async with serving(app) as port:
            for request in MALFORMED_REQUESTS:
                answer = await _raw(port, request)
                assert answer.split(b" ", 2)[1] == b"400", (request[:30], answer[:100])
            answer = await _raw(port, b"GET /bug HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer.split(b" ", 2)[1] == b"500"

    with caplog.at_level(logging.DEBUG, logger="aiohttp"):
        asyncio.run(scenario())
    records = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert [(r.levelno, str(r.exc_info[1]) if r.exc_info else "") for r in records] == [
        (logging.ERROR, "a bug in a pagewarm handler")
    ]
