"""Collector ``residency``: how much of each model's weight files is in the page cache.

One cachestat(2) per file (mincore(2) where cachestat is missing). Where the kernel cannot be
trusted for a model (unprivileged mincore would report everything resident), the resident
series of that model are absent and ``pagewarm_model_residency_trusted`` is 0: an unknown
figure is never published as a number. Dirty, evicted and recently evicted bytes come from
cachestat only.

Per-file series (``pagewarm_file_*{model,file}``) are optional: on for a model or a few
named one by one, off for a node's whole models directory, where they would be most of
the series Prometheus stores (``per_file_series``). When on, they are capped per model
(shards first, in load order).

A node exports 1,000 models: series are added in bulk, one label dict per model (or file)
shared by its series, rather than through ``add_metric``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors.base import PartialCollectionError, add_gauge, gauge
from exporter.models import ModelScan, label_value
from exporter.residency import ModelResidency, ResidencyProbe, ScanResidency, measure_scan
from exporter.weightset import FileRole, WeightSet

log = structlog.get_logger("pagewarm")

DEFAULT_FILE_SERIES_LIMIT = 256


class _ModelFamilies:
    def __init__(self) -> None:
        model = ["model"]
        self.size = gauge(
            "pagewarm_model_size_bytes", "Total size of the model's weight set.", model
        )
        self.resident = gauge(
            "pagewarm_model_resident_bytes",
            "Bytes of the weight set in the page cache (absent when untrusted).",
            model,
        )
        self.ratio = gauge(
            "pagewarm_model_resident_ratio",
            "Fraction 0..1 of the weight set in the page cache (absent when untrusted).",
            model,
        )
        self.trusted = gauge(
            "pagewarm_model_residency_trusted",
            "1 when the kernel reports this model's residency truthfully to the exporter, "
            "0 when it would not (run as the files' owner or with CAP_FOWNER).",
            model,
        )
        self.dirty = gauge(
            "pagewarm_model_dirty_bytes", "Dirty page-cache bytes of the weight set.", model
        )
        self.evicted = gauge(
            "pagewarm_model_evicted_bytes",
            "Bytes of the weight set evicted from the page cache (cachestat).",
            model,
        )
        self.recently_evicted = gauge(
            "pagewarm_model_recently_evicted_bytes",
            "Bytes evicted recently enough to count as refaults if read again (cachestat).",
            model,
        )

    def add(self, labels: dict[str, str], residency: ModelResidency) -> None:
        add_gauge(self.size, labels, residency.size_bytes)
        add_gauge(self.trusted, labels, 1.0 if residency.trusted else 0.0)
        cached = residency.cached_bytes
        if cached is not None:
            add_gauge(self.resident, labels, cached)
            # An empty weight set is not "100% resident": its ratio is left out.
            if residency.size_bytes:
                add_gauge(self.ratio, labels, cached / residency.size_bytes)
        for family, value in (
            (self.dirty, residency.dirty_bytes),
            (self.evicted, residency.evicted_bytes),
            (self.recently_evicted, residency.recently_evicted_bytes),
        ):
            if value is not None:
                add_gauge(family, labels, value)

    def __iter__(self) -> Iterator[GaugeMetricFamily]:
        return iter(vars(self).values())


class _FileFamilies:
    def __init__(self) -> None:
        per_file = ["model", "file"]
        self.size = gauge("pagewarm_file_size_bytes", "Size of a weight file.", per_file)
        self.resident = gauge(
            "pagewarm_file_resident_bytes",
            "Bytes of a weight file in the page cache (absent when untrusted).",
            per_file,
        )

    def __iter__(self) -> Iterator[GaugeMetricFamily]:
        return iter(vars(self).values())


# Which files of a weight set get series (positions in its files), with their labels.
_FileSeries = tuple[tuple[int, dict[str, str]], ...]


def files_to_export(weight_set: WeightSet, limit: int) -> list[int]:
    """Positions of up to ``limit`` files: the shards in load order first, then the small
    index files."""
    files = weight_set.files
    shards = [i for i, f in enumerate(files) if f.role is FileRole.WEIGHTS]
    others = [i for i, f in enumerate(files) if f.role is not FileRole.WEIGHTS]
    return [*shards, *others][:limit]


class ResidencyCollector:
    name = "residency"

    def __init__(
        self,
        probe: ResidencyProbe,
        file_series_limit: int = DEFAULT_FILE_SERIES_LIMIT,
        *,
        per_file_series: bool = True,
    ) -> None:
        self.probe = probe
        self.per_file_series = per_file_series
        self.file_series_limit = file_series_limit
        self._capped: set[str] = set()
        # Per model path: the name and weight set its file series were chosen for, and them.
        self._file_series: dict[Path, tuple[str, WeightSet, _FileSeries]] = {}

    def collect_models(self, scan: ModelScan) -> Iterator[Metric]:
        return self.families(measure_scan(self.probe, scan))

    def families(self, result: ScanResidency) -> Iterator[Metric]:
        """The families of a residency pass (a keep-warm pass's too: measured once)."""
        models, files = _ModelFamilies(), _FileFamilies()
        file_series: dict[Path, tuple[str, WeightSet, _FileSeries]] = {}
        for model, residency in result.models:
            models.add(model.labels, residency)
            if not self.per_file_series:
                continue
            chosen = self._chosen_files(model.name, model.path, residency.weight_set)
            file_series[model.path] = (model.name, residency.weight_set, chosen)
            for position, labels in chosen:
                f = residency.files[position]
                add_gauge(files.size, labels, f.size)
                if f.cached_bytes is not None:
                    add_gauge(files.resident, labels, f.cached_bytes)
        self._file_series = file_series
        yield from models
        if self.per_file_series:
            yield from files
        if result.failed:
            names = ", ".join(name for name, _ in result.failed)
            raise PartialCollectionError(f"residency failed for {names}")

    def _chosen_files(self, model: str, path: Path, weight_set: WeightSet) -> _FileSeries:
        known = self._file_series.get(path)
        if known is not None and known[0] == model and known[1] is weight_set:
            return known[2]
        positions = files_to_export(weight_set, self.file_series_limit)
        self._note_cap(model, len(weight_set.files), len(positions))
        names = [label_value(weight_set.display_name(weight_set.files[i])) for i in positions]
        return tuple(
            (i, {"model": model, "file": name}) for i, name in zip(positions, names, strict=True)
        )

    def _note_cap(self, model: str, total: int, exported: int) -> None:
        if exported < total and model not in self._capped:
            self._capped.add(model)
            log.info(
                "per-file series capped",
                model=model,
                files=total,
                exported=exported,
                setting="PAGEWARM_FILE_SERIES_LIMIT",
            )
