"""Collector ``models``: which watched models could be scanned, how many files make up each,
and what the scan passed over (FIFOs, broken links, loops, other formats) and why."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import Metric

from exporter.collectors.base import MODELS_COLLECTOR, gauge
from exporter.models import ModelScan
from exporter.weightset import SkipReason


class DiscoveryCollector:
    name = MODELS_COLLECTOR

    def collect_models(self, scan: ModelScan) -> Iterator[Metric]:
        present = gauge(
            "pagewarm_model_present",
            "1 when the model path was scanned and holds weight files, 0 when it is missing, "
            "unreadable, on a pseudo-filesystem, or holds no weight bytes (the log says why).",
            ["model"],
        )
        files = gauge(
            "pagewarm_model_files", "Files in the model's weight set (index and shards).", ["model"]
        )
        skipped = gauge(
            "pagewarm_model_skipped_files",
            "Files under the model path left out of the weight set, by reason.",
            ["model", "reason"],
        )
        for model in scan.models:
            present.add_metric([model.name], 0.0 if model.weight_set is None else 1.0)
        for model, weight_set in scan.available:
            files.add_metric([model.name], len(weight_set.files))
            reasons = Counter(s.reason for s in weight_set.skipped)
            # Every reason, zeros included, so that an alert on "> 0" has a series to watch.
            for reason in SkipReason:
                skipped.add_metric([model.name, reason.value], reasons[reason])
        yield from (present, files, skipped)
