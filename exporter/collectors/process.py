"""Collector ``self``: the exporter's own build and process (``pagewarm_build_info{version}``,
and prometheus_client's ``process_*`` series: CPU seconds, resident memory, open fds), so
that the exporter's cost is on the same dashboards as what it measures."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import ProcessCollector
from prometheus_client.core import Metric

from exporter import __version__
from exporter.collectors.base import gauge


class SelfCollector:
    name = "self"

    def __init__(self, version: str = __version__) -> None:
        self.version = version
        # registry=None: used from here only, never registered in the global registry.
        self._process = ProcessCollector(registry=None)

    def collect(self) -> Iterator[Metric]:
        info = gauge("pagewarm_build_info", "The pagewarm version running; always 1.", ["version"])
        info.add_metric([self.version], 1.0)
        yield info
        yield from self._process.collect()
