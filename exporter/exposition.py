"""The exposition of a collection, in the format the scraper asked for, at node scale.

prometheus_client negotiates the format (``choose_encoder``) and its encoders are the
reference, but they escape every sample's name character by character (0.26): a node's
10,000 series cost 70-100 ms of CPU that way, as much as measuring the node's page cache.
For the families pagewarm builds (legacy metric and label names; no timestamps, exemplars,
native histograms or OpenMetrics-only types) this module writes the same bytes directly;
anything else goes to prometheus_client's encoder, as do the escaping schemes that rewrite
names (dots, values). tests/exporter/test_exposition.py holds the two byte for byte equal.

Reuse::

    encode, content_type = encoder_for(accept_header)
    body = encode(collector)  # any object with a collect()
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from enum import Enum
from functools import partial

from prometheus_client import exposition
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString, parse_version

Encoder = Callable[[Collector], bytes]
# prometheus_client's own number format (Go's): the same bytes, by definition.
_number: Callable[[float], str] = floatToGoString

# Names every escaping scheme but dots and values leaves as they are (no colons: the
# OpenMetrics encoder rewrites a colon in a sample name under the underscores scheme).
_PLAIN_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_PLAIN_ESCAPINGS = (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8)
# The types both formats write without rewriting samples (as text 0.0.4 names them).
_TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram",
               "summary": "summary", "unknown": "untyped"}  # fmt: skip
# Samples the text format moves into families of their own.
_TEXT_MOVED_SUFFIXES = ("_created", "_gsum", "_gcount")


class Format(Enum):
    TEXT = "text"  # Prometheus text 0.0.4 (and 1.0.0, same bytes for plain names)
    OPENMETRICS = "openmetrics"  # OpenMetrics 1.x


class _NotPlainError(Exception):
    """The families need prometheus_client's encoder."""


def encoder_for(accept: str) -> tuple[Encoder, str]:
    """prometheus_client's choice of encoder and content type for ``accept``, with this
    module's encoder in its place where they write the same bytes."""
    encoder, content_type = exposition.choose_encoder(accept)
    fmt = plain_format(encoder)
    if fmt is None:
        return encoder, content_type
    return partial(_encode, fmt, encoder), content_type


def plain_format(encoder: Encoder) -> Format | None:
    """The format ``encoder`` writes, when it leaves plain names as they are."""
    func, options = encoder, {}
    if isinstance(encoder, partial):
        func, options = encoder.func, encoder.keywords
    if options.get("escaping", openmetrics.UNDERSCORES) not in _PLAIN_ESCAPINGS:
        return None
    if func is exposition.generate_latest:
        return Format.TEXT
    if func is openmetrics.generate_latest:
        version = parse_version(str(options.get("version", "1.0.0")))
        return Format.OPENMETRICS if version[:1] == (1,) else None
    return None


def _encode(fmt: Format, fallback: Encoder, collector: Collector) -> bytes:
    families = list(collector.collect())
    try:
        return render(families, fmt)
    except _NotPlainError:
        return fallback(_Families(families))


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def render(families: Iterable[Metric], fmt: Format) -> bytes:
    """The exposition of ``families``; raises ``_NotPlainError`` for what it does not write."""
    out: list[str] = []
    # Labels rendered once per dict (collectors share one between a model's series), by
    # id: the families hold the dicts, so no id is reused while this lives.
    label_text: dict[int, str] = {}
    openmetrics_format = fmt is Format.OPENMETRICS
    for family in families:
        out.extend(_header(family, openmetrics_format))
        plain_names: set[str] = set()  # whether a name is plain depends on its family's
        for name, labels, value, timestamp, exemplar, native_histogram in family.samples:
            if name not in plain_names:
                _check_plain_sample_name(family, name, openmetrics_format)
                plain_names.add(name)
            if value is None or timestamp is not None or exemplar or native_histogram:
                raise _NotPlainError
            text = label_text.get(id(labels))
            if text is None:
                text = label_text[id(labels)] = _label_text(labels)
            out.append(f"{name}{text} {_number(value)}\n")
    if openmetrics_format:
        out.append("# EOF\n")
    return "".join(out).encode("utf-8")


def _header(family: Metric, openmetrics_format: bool) -> list[str]:
    name, kind = family.name, family.type
    if kind not in _TEXT_TYPES or not _PLAIN_NAME.fullmatch(name):
        raise _NotPlainError
    if openmetrics_format:
        doc = _escape_value(family.documentation)
        lines = [f"# HELP {name} {doc}\n", f"# TYPE {name} {kind}\n"]
        if family.unit:
            lines.append(f"# UNIT {name} {family.unit}\n")
        return lines
    if kind == "counter":
        name += "_total"
    doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return [f"# HELP {name} {doc}\n", f"# TYPE {name} {_TEXT_TYPES[kind]}\n"]


def _check_plain_sample_name(family: Metric, name: str, openmetrics_format: bool) -> None:
    if not _PLAIN_NAME.fullmatch(name):
        raise _NotPlainError
    if not openmetrics_format and any(name == family.name + s for s in _TEXT_MOVED_SUFFIXES):
        raise _NotPlainError


def _escape_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    for key in labels:
        # "__" names are reserved: OpenMetrics under allow-utf-8 quotes them.
        if key.startswith("__") or not _PLAIN_NAME.fullmatch(key):
            raise _NotPlainError
    pairs = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(labels.items()))
    return "{" + pairs + "}"
