"""Reading metric families the way Prometheus would see them."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric


def series(metrics: Iterable[Metric], name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample called ``name`` (``_total``, ``_bucket`` included): labels -> value."""
    return {
        frozenset(s.labels.items()): s.value for m in metrics for s in m.samples if s.name == name
    }


def value(metrics: Iterable[Metric], name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``; None when there is none."""
    wanted = set(labels.items())
    found = [v for k, v in series(metrics, name).items() if wanted <= k]
    if len(found) > 1:
        raise AssertionError(f"{name}{labels} matches {len(found)} samples")
    return found[0] if found else None


def label_values(metrics: Iterable[Metric], name: str, label: str) -> set[str]:
    return {dict(k)[label] for k in series(metrics, name)}
