"""Collector ``residency``: how much of each model's weight files is in the page cache.

One cachestat(2) per file (mincore(2) where cachestat is missing). Where the kernel cannot be
trusted for a model (unprivileged mincore would report everything resident), the resident
series of that model are absent and ``pagewarm_model_residency_trusted`` is 0: an unknown
figure is never published as a number. Dirty, evicted and recently evicted bytes come from
cachestat only. Per-file series are capped per model (shards first, in load order).
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors.base import PartialCollectionError, gauge
from exporter.models import ModelScan, label_value
from exporter.residency import FileResidency, ModelResidency, ResidencyProbe
from exporter.weightset import FileRole

log = structlog.get_logger("pagewarm")

DEFAULT_FILE_SERIES_LIMIT = 256


class _Families:
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
        per_file = ["model", "file"]
        self.file_size = gauge("pagewarm_file_size_bytes", "Size of a weight file.", per_file)
        self.file_resident = gauge(
            "pagewarm_file_resident_bytes",
            "Bytes of a weight file in the page cache (absent when untrusted).",
            per_file,
        )

    def __iter__(self) -> Iterator[GaugeMetricFamily]:
        return iter(vars(self).values())


def _optional(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)


def files_to_export(residency: ModelResidency, limit: int) -> list[FileResidency]:
    """Up to ``limit`` files: the shards in load order first, then the small index files."""
    shards = [f for f in residency.files if f.file.role is FileRole.WEIGHTS]
    others = [f for f in residency.files if f.file.role is not FileRole.WEIGHTS]
    return [*shards, *others][:limit]


class ResidencyCollector:
    name = "residency"

    def __init__(
        self, probe: ResidencyProbe, file_series_limit: int = DEFAULT_FILE_SERIES_LIMIT
    ) -> None:
        self.probe = probe
        self.file_series_limit = file_series_limit
        self._capped: set[str] = set()

    def collect_models(self, scan: ModelScan) -> Iterator[Metric]:
        families = _Families()
        failed: list[str] = []
        for model, weight_set in scan.available:
            try:
                residency = self.probe.measure(weight_set)
            except Exception as exc:  # one model must not hide the others
                log.warning("residency failed", model=model.name, error=str(exc), exc_info=exc)
                failed.append(model.name)
                continue
            self._add(families, model.name, residency)
        yield from families
        if failed:
            raise PartialCollectionError(f"residency failed for {', '.join(failed)}")

    def _add(self, families: _Families, model: str, residency: ModelResidency) -> None:
        labels = [model]
        families.size.add_metric(labels, residency.size_bytes)
        families.trusted.add_metric(labels, 1.0 if residency.trusted else 0.0)
        cached = residency.cached_bytes
        if cached is not None:
            families.resident.add_metric(labels, cached)
            # An empty weight set is not "100% resident": its ratio is left out.
            if residency.size_bytes:
                families.ratio.add_metric(labels, cached / residency.size_bytes)
        _optional(families.dirty, labels, residency.dirty_bytes)
        _optional(families.evicted, labels, residency.evicted_bytes)
        _optional(families.recently_evicted, labels, residency.recently_evicted_bytes)
        exported = files_to_export(residency, self.file_series_limit)
        self._note_cap(model, len(residency.files), len(exported))
        weight_set = residency.weight_set
        for f in exported:
            file_labels = [model, label_value(weight_set.display_name(f.file))]
            families.file_size.add_metric(file_labels, f.size)
            _optional(families.file_resident, file_labels, f.cached_bytes)

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
