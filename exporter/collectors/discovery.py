"""Collector ``models``: which watched models could be scanned, how many files make up each,
and what the scan passed over (FIFOs, broken links, loops, other formats) and why.

A configured model reports every skip reason, zeros included; a model found in the models
directory reports the reasons that occur (a node's directory holds 1,000 models)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import Metric

from exporter.collectors.base import MODELS_COLLECTOR, add_gauge, gauge
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
            add_gauge(present, model.labels, 0.0 if model.weight_set is None else 1.0)
        for model, weight_set in scan.available:
            add_gauge(files, model.labels, len(weight_set.files))
            reasons = Counter(s.reason for s in weight_set.skipped)
            # A configured model has every reason, zeros included, so that an alert on
            # "> 0" has a series to watch from the start; a node's models directory, of
            # 1,000 models, has the reasons that occur (8,000 zeros would cost more than
            # all its other series together).
            for reason in SkipReason if model.configured else sorted(reasons):
                labels = {"model": model.name, "reason": reason.value}
                add_gauge(skipped, labels, reasons[reason])
        yield from (present, files, skipped)
