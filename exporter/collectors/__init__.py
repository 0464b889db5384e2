"""pagewarm's Prometheus collectors, one per file (node_exporter style), and the registry
that holds them.

Collectors (the ``collector`` label of ``pagewarm_collector_duration_seconds`` and
``pagewarm_collector_success``):

- ``models`` (discovery.py): the model scan itself: present, files, skipped files;
- ``residency`` (residency.py): page-cache residency per model, and per file unless a
  models directory is watched (``per_file_series``);
- ``devices`` (devices.py): block devices, I/O scheduler, read-ahead, filesystem per model;
- ``memory`` (memory.py): MemAvailable and the memory cgroup;
- ``samples`` (samples.py): load and pre-warm durations from the JSONL sample store;
- ``self`` (process.py): build info and the exporter's own process.

Reuse (the sidecar does)::

    registry = build_registry([ModelSpec(path, name)], settings, extra_collectors=[mine])

``mine`` is any object with a ``name`` (its collector label) and a ``collect()`` that
returns fresh metric families; it is timed and isolated like the built-in ones. Collecting
the registry does blocking work (file scans, syscalls, sysfs): call it off the event loop
(``exporter.collection.Collection`` does).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from exporter.collectors.base import (
    Collector,
    CollectorSet,
    ModelCollector,
    PartialCollectionError,
)
from exporter.collectors.devices import DevicesCollector
from exporter.collectors.discovery import DiscoveryCollector
from exporter.collectors.memory import MemoryCollector
from exporter.collectors.process import SelfCollector
from exporter.collectors.residency import ResidencyCollector
from exporter.collectors.samples import SamplesCollector
from exporter.models import Models, ModelScanner, ModelSources
from exporter.residency import ResidencyProbe
from exporter.settings import ExporterSettings

__all__ = [
    "Collector",
    "CollectorSet",
    "ModelCollector",
    "Models",
    "PartialCollectionError",
    "build_collector_set",
    "build_registry",
]


def build_collector_set(
    models: Models,
    settings: ExporterSettings | None = None,
    *,
    extra_collectors: Sequence[Collector] = (),
) -> CollectorSet:
    """Every built-in collector for ``models``, then ``extra_collectors``."""
    settings = settings or ExporterSettings()
    sources = ModelSources.of(models)
    scanner = ModelScanner(
        sources,
        settings.weight_patterns,
        settings.metadata_patterns,
        cross_filesystems=settings.cross_filesystems,
    )
    per_file_series = settings.per_file_series
    if per_file_series is None:  # a node's models directory: per-model series only
        per_file_series = sources.models_dir is None
    return CollectorSet(
        scanner,
        DiscoveryCollector(),
        model_collectors=[
            ResidencyCollector(
                ResidencyProbe(settings.residency_method),
                settings.file_series_limit,
                per_file_series=per_file_series,
            ),
            DevicesCollector(),
        ],
        collectors=[
            MemoryCollector(),
            # Models named in the configuration get their load series from the start; the
            # ones a models-dir holds appear with their first sample.
            SamplesCollector(settings.samples, [m.label for m in sources.models]),
            SelfCollector(),
            *extra_collectors,
        ],
    )


def build_registry(
    models: Models,
    settings: ExporterSettings | None = None,
    *,
    extra_collectors: Sequence[Collector] = (),
) -> CollectorRegistry:
    """A registry (not the global one) holding pagewarm's collectors for ``models``: a
    ``ModelSources``, or a list of ``ModelSpec``s and paths. ``settings`` default to the
    environment's (``PAGEWARM_*``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(build_collector_set(models, settings, extra_collectors=extra_collectors))
    return registry
