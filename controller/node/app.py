"""The agent's process: the exporter's HTTP server (its collectors for the node's models,
plus ``node``; ``/status``) on the event loop, keep-warm passes in a thread beside it.

The exporter's scanner follows the config: after each pass it is given the models the
pass used, so a config change reaches the metrics without a restart.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from controller.node.agent import NodeAgent
from controller.node.collector import NodeCollector
from exporter.collectors import build_collector_set
from exporter.linux.libc import libc
from exporter.server import create_app, serve

log = structlog.get_logger("pagewarm")

# glibc's mallopt: allocations from this size up are mapped and unmapped on their own.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20

AGENT_KEY = web.AppKey("pagewarm_node_agent", NodeAgent)


async def status(request: web.Request) -> web.Response:
    """The warm map as JSON (the same document as ``pagewarm node --once --json``)."""
    document = request.app[AGENT_KEY].map.document()
    return web.json_response(document, dumps=lambda d: json.dumps(d, indent=2))


def build_app(agent: NodeAgent) -> tuple[web.Application, Callable[[], None]]:
    """The server's application, and the call that hands the exporter's scanner the
    models of the agent's last pass."""
    settings = agent.settings
    if settings.per_file_series is None:  # a node's models: per-model series only
        settings = settings.model_copy(update={"per_file_series": False})
    collectors = build_collector_set(
        agent.scanner.sources, settings, extra_collectors=[NodeCollector(agent)]
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collectors)
    app = create_app(settings, registry=registry, extra_routes=[web.get("/status", status)])
    app[AGENT_KEY] = agent

    def follow_config() -> None:
        collectors.scanner.sources = agent.scanner.sources

    return app, follow_config


def keep_warm(agent: NodeAgent, on_pass: Callable[[], None] | None = None) -> None:
    """A pass every interval (at once after a pass cut short by its interval) until the
    agent is cancelled. Blocking: it runs in a thread of its own for the agent's life, so
    the event loop sleeps between passes instead of handing each one to a worker and
    timing the wait (half a millisecond a pass, as much as the pass's own logic)."""
    interval = agent.settings.node_interval
    while not agent.cancel.is_set():
        started = time.monotonic()
        try:
            node_map = agent.run_pass()
        except Exception as exc:  # the next pass tries again; the server keeps serving
            log.exception("keep-warm pass failed", error=str(exc))
        else:
            if on_pass is not None:
                on_pass()
            log.debug(
                "keep-warm pass",
                seconds=node_map.last_pass_seconds,
                rewarmed_bytes=node_map.last_rewarm_bytes,
                stopped_by=node_map.stopped_by,
            )
        agent.cancel.wait(max(0.0, started + interval - time.monotonic()))


def return_buffers_to_the_kernel() -> None:
    """A re-warm's read buffers (a few MiB per thread) are freed after it, but glibc's
    dynamic threshold would keep such blocks in its heaps: a resident agent would hold
    them between re-warms. A fixed threshold maps and unmaps them each time."""
    libc().mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def spare_the_startup_heap_from_collection() -> None:
    """Each pass leaves a few thousand objects to the oldest generation, so now and then
    the cyclic collector walks the whole heap, most of it modules, pydantic
    schemas and the server, built once and never freed: frozen, they are never walked
    again (what a resident agent idle at 1 CPU-second an hour cannot pay for)."""
    gc.collect()
    gc.freeze()


async def run(agent: NodeAgent) -> None:
    """Serve and keep warm until SIGTERM/SIGINT; raises OSError when the port is taken."""
    return_buffers_to_the_kernel()
    app, follow_config = build_app(agent)
    spare_the_startup_heap_from_collection()
    stop = asyncio.Event()
    passes = asyncio.create_task(asyncio.to_thread(keep_warm, agent, follow_config))
    settings = agent.settings
    try:
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            idle_timeout_seconds=settings.idle_timeout_seconds,
            shutdown=stop,
        )
    finally:
        stop.set()
        agent.cancel.set()  # a pass in flight stops re-reading at its next step
        await passes
