"""What every collector shares: the two collector shapes, the family helpers, and
``CollectorSet``, which runs them the node_exporter way.

A collector builds fresh metric families on every call (prometheus/client_python's custom
collector pattern). ``CollectorSet`` scans the models once per collection and hands the
scan to each model collector, times every collector, and turns an exception into
``pagewarm_collector_success{collector} 0``: the other collectors still report, and the
process never dies from a probe. A collector that could report part of what it covers
yields that part and then raises ``PartialCollectionError``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample

from exporter.models import ModelScan, ModelScanner

log = structlog.get_logger("pagewarm")

MODELS_COLLECTOR = "models"


class Collector(Protocol):
    """A named collector; its name is the ``collector`` label of its duration and success."""

    @property
    def name(self) -> str: ...

    def collect(self) -> Iterable[Metric]: ...


class ModelCollector(Protocol):
    """A named collector of per-model metrics, given the collection's one model scan."""

    @property
    def name(self) -> str: ...

    def collect_models(self, scan: ModelScan) -> Iterable[Metric]: ...


class PartialCollectionError(Exception):
    """Raised after yielding what could be collected, when a part (one model) failed."""


def _unit(name: str) -> str:
    # OpenMetrics carries the unit in its own # UNIT line; the text format ignores it.
    for unit in ("bytes", "seconds"):
        if name.endswith(f"_{unit}"):
            return unit
    return ""


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels, unit=_unit(name))


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=labels)


def histogram(name: str, documentation: str, labels: Sequence[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, labels=labels, unit=_unit(name))


def add_gauge(family: GaugeMetricFamily, labels: dict[str, str], value: float) -> None:
    """``family.add_metric`` for collectors that add thousands of series: the caller's
    ``labels`` dict is kept as it is (no per-call dict and zip; the exposition only reads
    it, so one dict may serve every series of a model)."""
    family.samples.append(Sample(family.name, labels, value))


@dataclass(frozen=True, slots=True)
class _Outcome:
    collector: str
    seconds: float
    success: bool


class CollectorSet:
    """One prometheus_client collector that runs pagewarm's collectors in order: the model
    scan (as collector ``models``), the model collectors, then the plain ones."""

    def __init__(
        self,
        scanner: ModelScanner,
        discovery: ModelCollector,
        model_collectors: Sequence[ModelCollector] = (),
        collectors: Sequence[Collector] = (),
    ) -> None:
        names = [MODELS_COLLECTOR, *(c.name for c in model_collectors)]
        names += [c.name for c in collectors]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"collector names must be unique, repeated: {duplicates}")
        self.scanner = scanner
        self.discovery = discovery
        self.model_collectors = tuple(model_collectors)
        self.collectors = tuple(collectors)
        self._failing: set[str] = set()

    def collect(self) -> Iterable[Metric]:
        outcomes: list[_Outcome] = []
        scans: list[ModelScan] = []

        def discover() -> Iterable[Metric]:
            scans.append(self.scanner.scan())
            return self.discovery.collect_models(scans[0])

        families = self._run(MODELS_COLLECTOR, discover, outcomes)
        for model_collector in self.model_collectors:
            if not scans:  # no scan, nothing to measure: these fail with the scan
                outcomes.append(_Outcome(model_collector.name, 0.0, False))
                continue
            families += self._run(
                model_collector.name, partial(model_collector.collect_models, scans[0]), outcomes
            )
        for collector in self.collectors:
            families += self._run(collector.name, collector.collect, outcomes)
        return [*families, *_outcome_families(outcomes)]

    def _run(
        self, name: str, produce: Callable[[], Iterable[Metric]], outcomes: list[_Outcome]
    ) -> list[Metric]:
        families: list[Metric] = []
        started = time.perf_counter()
        try:
            families.extend(produce())
        except Exception as exc:  # a probe must never take the exporter down
            self._failed(name, exc)
            success = False
        else:
            if name in self._failing:
                self._failing.discard(name)
                log.info("collector recovered", collector=name)
            success = True
        outcomes.append(_Outcome(name, time.perf_counter() - started, success))
        return families

    def _failed(self, name: str, exc: Exception) -> None:
        # The traceback once when a collector starts failing, a short line afterwards.
        if name in self._failing:
            log.debug("collector still failing", collector=name, error=str(exc))
        else:
            self._failing.add(name)
            log.error("collector failed", collector=name, error=str(exc), exc_info=exc)


def _outcome_families(outcomes: list[_Outcome]) -> list[Metric]:
    duration = gauge(
        "pagewarm_collector_duration_seconds",
        "How long each collector took in the last collection.",
        ["collector"],
    )
    success = gauge(
        "pagewarm_collector_success",
        "1 when the collector's last run succeeded, 0 when it failed (see the logs).",
        ["collector"],
    )
    for outcome in outcomes:
        duration.add_metric([outcome.collector], outcome.seconds)
        success.add_metric([outcome.collector], 1.0 if outcome.success else 0.0)
    return [duration, success]
