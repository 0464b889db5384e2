"""The exporter's HTTP server (aiohttp): ``/metrics``, ``/healthz`` and a landing page ``/``.

Reuse (the sidecar does; everything runs in one process, on one port)::

    app = create_app(
        settings,
        [ModelSpec(model_path, model_name)],
        extra_collectors=[SidecarCollector(state)],  # name + collect(), timed and isolated
        extra_routes=[web.get("/startup", startup), web.get("/status", status)],
    )
    await serve(app, host=settings.host, port=settings.port, shutdown=stop_event)

``serve`` runs until ``shutdown`` is set or SIGTERM/SIGINT arrives, then stops accepting,
lets requests in flight finish (a few seconds at most) and returns.

Bounded by design: only fixed routes, GET/HEAD only, no route takes a path parameter and
nothing is served from disk (no request path ever reaches the filesystem); request bodies
are never read and capped; header lines are capped; a connection that sends no complete
request within ``idle_timeout_seconds`` (idle keep-alive, or a slow client trickling its
headers) is closed; a scrape waits for a collection at most ``scrape_timeout_seconds`` (or
Prometheus's own X-Prometheus-Scrape-Timeout-Seconds, if shorter) and then gets a 503;
a malformed request gets its 400 and one short, rate-limited warning in the log
(``exporter.requestlog``), not a traceback each.
"""

from __future__ import annotations

import asyncio
import html
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.registry import Collector as RegistryCollector

from exporter import __version__
from exporter.collection import Collection
from exporter.collectors import Collector, Models, build_registry
from exporter.models import ModelSources
from exporter.requestlog import RequestErrorLog
from exporter.settings import ExporterSettings

log = structlog.get_logger("pagewarm")

COLLECTION_KEY = web.AppKey("pagewarm_collection", Collection)
SETTINGS_KEY = web.AppKey("pagewarm_settings", ExporterSettings)

# GET requests carry no body; anything larger than this is refused before it is read.
MAX_REQUEST_BODY_BYTES = 16 << 10
MAX_HEADER_LINE_BYTES = 8190
# Prometheus must get its answer before its own timeout, or it drops the whole scrape.
PROMETHEUS_TIMEOUT_MARGIN_SECONDS = 0.25
PROMETHEUS_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def create_app(
    settings: ExporterSettings | None = None,
    models: Models | None = None,
    *,
    extra_collectors: Sequence[Collector] = (),
    extra_routes: Iterable[web.AbstractRouteDef] = (),
    registry: RegistryCollector | None = None,
) -> web.Application:
    """The exporter's application. ``models`` default to the settings' (MODEL_PATH,
    PAGEWARM_MODEL_PATHS, PAGEWARM_MODELS_DIR); ``registry`` replaces the built-in
    collectors altogether (``extra_collectors`` then do not apply)."""
    settings = settings or ExporterSettings()
    if registry is None:
        sources = ModelSources.from_settings(settings) if models is None else models
        registry = build_registry(sources, settings, extra_collectors=extra_collectors)
    app = web.Application(client_max_size=MAX_REQUEST_BODY_BYTES, middlewares=[_security_headers])
    app[SETTINGS_KEY] = settings
    app[COLLECTION_KEY] = Collection(registry, max_age_seconds=settings.collection_max_age_seconds)
    app.add_routes(
        [web.get("/", landing), web.get("/metrics", metrics), web.get("/healthz", healthz)]
    )
    app.add_routes(extra_routes)
    app.on_cleanup.append(_close_collection)
    return app


async def _close_collection(app: web.Application) -> None:
    app[COLLECTION_KEY].close()


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.update(_SECURITY_HEADERS)
    return response


def scrape_timeout(request: web.Request) -> float:
    """The setting, or Prometheus's own scrape timeout less a margin when it is shorter."""
    limit = request.app[SETTINGS_KEY].scrape_timeout_seconds
    try:
        theirs = float(request.headers.get(PROMETHEUS_TIMEOUT_HEADER, "inf"))
    except ValueError:
        return limit
    return max(0.1, min(limit, theirs - PROMETHEUS_TIMEOUT_MARGIN_SECONDS))


async def metrics(request: web.Request) -> web.Response:
    collection = request.app[COLLECTION_KEY]
    timeout = scrape_timeout(request)
    try:
        async with asyncio.timeout(timeout):
            page = await collection.render(
                request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
            )
    except TimeoutError:
        log.warning("scrape timed out waiting for a collection", timeout_seconds=timeout)
        return web.Response(
            status=503,
            text=f"collection did not finish within {timeout:.1f} s; it goes on, and a later "
            "scrape gets its result\n",
        )
    except Exception:  # a registry without pagewarm's isolation, or a render bug
        log.exception("collection failed")
        return web.Response(status=500, text="collection failed; the exporter's log says why\n")
    headers = {"Content-Type": page.content_type, "Vary": "Accept, Accept-Encoding"}
    if page.content_encoding:
        headers["Content-Encoding"] = page.content_encoding
    return web.Response(body=page.body, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers. Probe failures show in the metrics, not here."""
    return web.Response(text="ok\n")


_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>pagewarm exporter</title></head>
<body><h1>pagewarm exporter</h1>
<p>Page-cache residency, block devices and load times of model weights.
Version {version}.</p>
<ul>
{links}
</ul></body></html>
"""


async def landing(request: web.Request) -> web.Response:
    paths = sorted(
        {
            info["path"]
            for route in request.app.router.routes()
            if route.method == "GET" and "path" in (info := route.get_info())
        }
    )
    links = "\n".join(
        f'<li><a href="{html.escape(p)}">{html.escape(p)}</a></li>' for p in paths if p != "/"
    )
    body = _LANDING.format(version=html.escape(__version__), links=links)
    return web.Response(text=body, content_type="text/html")


async def serve(
    app: web.Application,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - a pod's metrics port must be reachable
    port: int = 9741,
    idle_timeout_seconds: float = 15.0,
    shutdown: asyncio.Event | None = None,
    handle_signals: bool = True,
    shutdown_timeout_seconds: float = 5.0,
    on_listening: Callable[[list[tuple[str, int]]], None] | None = None,
) -> None:
    """Serve ``app`` until ``shutdown`` is set (or SIGTERM/SIGINT when ``handle_signals``),
    then shut down gracefully. Raises OSError when the address cannot be bound."""
    stop = shutdown or asyncio.Event()
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        logger=RequestErrorLog(),  # a malformed request: one short warning, rate-limited
        keepalive_timeout=idle_timeout_seconds,
        max_line_size=MAX_HEADER_LINE_BYTES,
        max_field_size=MAX_HEADER_LINE_BYTES,
        shutdown_timeout=shutdown_timeout_seconds,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        addresses = [(str(a[0]), int(a[1])) for a in runner.addresses]
        log.info(
            "serving",
            addresses=[f"{h}:{p}" for h, p in addresses],
            port=addresses[0][1] if addresses else port,
        )
        if on_listening:
            on_listening(addresses)
        with _signals_set(stop, enabled=handle_signals):
            await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
    log.info("stopped")


@contextmanager
def _signals_set(event: asyncio.Event, *, enabled: bool) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT set ``event``; the previous handlers come back after.
    Off the main thread no handler can be installed: the caller sets the event itself."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def received(sig: signal.Signals) -> None:
        log.info("signal received", signal=sig.name)
        event.set()

    for sig in (signal.SIGTERM, signal.SIGINT) if enabled else ():
        try:
            loop.add_signal_handler(sig, received, sig)
        except (RuntimeError, ValueError):
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
