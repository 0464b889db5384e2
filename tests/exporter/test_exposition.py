"""The exporter's own exposition writes the very bytes prometheus_client writes, for every
format a scraper negotiates; what it does not write itself goes to prometheus_client."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Exemplar, Sample

from exporter.collectors import build_collector_set
from exporter.exposition import Format, _NotPlainError, encoder_for, plain_format, render
from exporter.models import ModelSources, ModelSpec
from exporter.settings import ExporterSettings
from tests.support import write_random

ACCEPTS = {
    "none": ("", Format.TEXT),
    "prometheus 2": (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        Format.OPENMETRICS,
    ),
    "openmetrics allow-utf-8": (
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
        "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.5",
        Format.OPENMETRICS,
    ),
    "text 1.0.0 underscores": ("text/plain;version=1.0.0;escaping=underscores", Format.TEXT),
    "text 1.0.0 allow-utf-8": ("text/plain;version=1.0.0;escaping=allow-utf-8", Format.TEXT),
    "text 0.0.4": ("text/plain;version=0.0.4", Format.TEXT),
    # Schemes that rewrite names, and a format of another version: prometheus_client's.
    "openmetrics dots": ("application/openmetrics-text;version=1.0.0;escaping=dots", None),
    "openmetrics values": ("application/openmetrics-text;version=1.0.0;escaping=values", None),
    "text dots": ("text/plain;version=1.0.0;escaping=dots", None),
    "openmetrics 2.0.0": ("application/openmetrics-text;version=2.0.0", None),
}


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _plain_families() -> list[Metric]:
    """Everything the fast path writes: each type, units, escapes, odd values."""
    size = GaugeMetricFamily("demo_size_bytes", 'Bytes; a "quoted" \\ doc\nover lines.',
                             labels=["model", "file"], unit="bytes")  # fmt: skip
    shared = {"model": "llama", "file": "model-00001.safetensors"}
    for value in (0, 1, 2**40, 1_073_741_824, 0.5, 1e-9, 1.5e20, -3.25, math.inf, -math.inf):
        size.samples.append(Sample("demo_size_bytes", shared, value))
    size.add_metric(['quote " back \\ new\nline', "caf\ufffd \u00e9\u4e2d.safetensors"], math.nan)
    size.add_metric(["", ""], -0.0)
    bare = GaugeMetricFamily("demo_up", "No labels.")
    bare.add_metric([], 1)
    loads = CounterMetricFamily("demo_loads", "Loads.", labels=["mode"])
    loads.add_metric(["cold"], 3)
    loads.add_metric(["warm"], 0)
    duration = HistogramMetricFamily(
        "demo_duration_seconds", "Durations.", labels=["model"], unit="seconds"
    )
    duration.add_metric(["llama"], [("1.0", 1), ("5.0", 3), ("+Inf", 4)], sum_value=12.5)
    quantiles = SummaryMetricFamily("demo_latency_seconds", "Latency.", labels=["route"])
    quantiles.add_metric(["/metrics"], count_value=10, sum_value=0.25)
    untyped = UnknownMetricFamily("demo_other", "Untyped.", labels=["k"])
    untyped.add_metric(["v"], 7)
    empty = GaugeMetricFamily("demo_empty", "A family without series.", labels=["model"])
    # Plain here; the same sample name in demo_runs (a counter with created) is not.
    lookalike = GaugeMetricFamily("demo_runs_created", "A gauge.", labels=["m"])
    lookalike.add_metric(["a"], 1)
    return [size, bare, loads, duration, quantiles, untyped, empty, lookalike]


def _not_plain_families() -> dict[str, Metric]:
    created = CounterMetricFamily("demo_runs", "With created.", labels=["m"], created=1.7e9)
    created.add_metric(["a"], 2, created=1.7e9)
    info = InfoMetricFamily("demo_build", "Info.", value={"version": "1"})
    stamped = GaugeMetricFamily("demo_stamped", "A timestamp.", labels=["m"])
    stamped.add_metric(["a"], 1, timestamp=1.7e9)
    exemplar = HistogramMetricFamily("demo_ex_seconds", "An exemplar.", labels=["m"])
    exemplar.add_metric(["a"], [("1.0", 1), ("+Inf", 1)], sum_value=0.5)
    exemplar.samples[0] = exemplar.samples[0]._replace(exemplar=Exemplar({"trace": "x"}, 0.5))
    colon = GaugeMetricFamily("demo:recorded", "A colon.")
    colon.add_metric([], 1)
    reserved = GaugeMetricFamily("demo_reserved", "A reserved label name.", labels=["__x"])
    reserved.add_metric(["a"], 1)
    return {
        "created": created,
        "info": info,
        "timestamp": stamped,
        "exemplar": exemplar,
        "colon": colon,
        "reserved label": reserved,
    }


def _exporter_families(tmp_path: Path) -> list[Metric]:
    single = tmp_path / "single"
    write_random(single / "model-00001-of-00001.safetensors", 64 << 10)
    (single / "config.json").write_text("{}")
    models = tmp_path / "models"
    for name in ("a", "b"):
        write_random(models / name / "model.safetensors", 32 << 10)
    sources = ModelSources((ModelSpec(single, 'we"ird\\name'),), models_dir=models)
    settings = ExporterSettings(samples=tmp_path / "samples.jsonl", per_file_series=True)
    return list(build_collector_set(sources, settings).collect())


@pytest.mark.parametrize("accept", list(ACCEPTS))
def test_the_format_is_prometheus_clients_choice(accept: str) -> None:
    header, fmt = ACCEPTS[accept]
    encoder, content_type = choose_encoder(header)
    assert plain_format(encoder) is fmt
    assert encoder_for(header)[1] == content_type


@pytest.mark.parametrize("accept", list(ACCEPTS))
def test_plain_families_are_written_byte_for_byte_as_prometheus_client_does(
    accept: str, tmp_path: Path
) -> None:
    header, fmt = ACCEPTS[accept]
    families = [*_plain_families(), *_exporter_families(tmp_path)]
    theirs, _ = choose_encoder(header)
    expected = theirs(_Families(families))
    if fmt is not None:  # written here, not handed over
        assert render(families, fmt) == expected
    ours, _ = encoder_for(header)
    assert ours(_Families(families)) == expected
    assert b'model="we\\"ird\\\\name"' in expected


@pytest.mark.parametrize("kind", list(_not_plain_families()))
@pytest.mark.parametrize("accept", ["prometheus 2", "text 0.0.4"])
def test_what_the_fast_path_does_not_write_goes_to_prometheus_client(
    kind: str, accept: str
) -> None:
    header, fmt = ACCEPTS[accept]
    assert fmt is not None
    families = [*_plain_families(), _not_plain_families()[kind]]
    theirs, _ = choose_encoder(header)
    expected = theirs(_Families(families))
    if kind == "created" and fmt is Format.OPENMETRICS:  # inline there: written here
        assert render(families, fmt) == expected
    else:
        with pytest.raises(_NotPlainError):
            render(families, fmt)
    ours, _ = encoder_for(header)
    assert ours(_Families(families)) == expected
