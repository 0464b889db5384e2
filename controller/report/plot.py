"""The report's plot: load time per mode (every run), and time to ready when the pre-warm
runs before the start."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.report.comparison import Comparison, comparisons
from controller.report.statistics import group_loads, ok_seconds
from exporter.samples import Sample


def write_plot(samples: Sequence[Sample], path: Path) -> bool:
    """Load time per mode (and scheduler / pre-warm variant); False when nothing to plot.

    Horizontal: a bench with several pre-warm variants and schedulers has a dozen groups,
    whose names only stay readable along the y axis."""
    groups = {k: ok_seconds(v) for k, v in group_loads(samples).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return False
    import matplotlib  # noqa: PLC0415 - the 'bench' extra, only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    several_models = len({k.model for k in groups}) > 1
    several_schedulers = len({k.scheduler for k in groups}) > 1
    labels = []
    for key in groups:
        parts = [key.model] if several_models else []
        parts.append(key.label.replace("\n", " "))
        if several_schedulers:
            parts.append(key.scheduler)
        labels.append(" · ".join(parts))
    found = comparisons(samples)
    bars = sum(3 if c.warm is not None else 2 for c in found)
    heights = [1.2 + 0.38 * len(groups)] + ([1.2 + 0.3 * bars] if found else [])
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(10, sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    _plot_load_times(axes[0][0], labels, list(groups.values()))
    if found:
        _plot_time_to_ready(axes[1][0], found)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_load_times(ax: Any, labels: list[str], data: list[list[float]]) -> None:
    positions = list(range(len(labels), 0, -1))  # the first group on top
    ax.boxplot(data, positions=positions, orientation="horizontal", showfliers=False)
    for position, values in zip(positions, data, strict=True):
        offsets = [position + (j - (len(values) - 1) / 2) * 0.06 for j in range(len(values))]
        ax.scatter(values, offsets, s=14, alpha=0.7, zorder=3)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xlabel("load seconds")
    ax.set_xlim(left=0)
    ax.set_title("Load time per mode (every run)")
    ax.grid(axis="x", alpha=0.3)


def _plot_time_to_ready(ax: Any, found: list[Comparison]) -> None:
    names: list[str] = []
    loads: list[float] = []
    prewarms: list[float] = []
    for c in found:
        prefix = f"{c.variant} · " if len(found) > 1 else ""
        names += [f"{prefix}cold", f"{prefix}pre-warm + load"]
        loads += [c.cold.median, c.prewarm_cold.median]
        prewarms += [0.0, c.prewarm_cost.median]
        if c.warm is not None:
            names.append(f"{prefix}warm")
            loads.append(c.warm.median)
            prewarms.append(0.0)
    positions = list(range(len(names), 0, -1))
    ax.barh(positions, prewarms, color="#f4a261", label="pre-warm")
    ax.barh(positions, loads, left=prewarms, color="#2a9d8f", label="load")
    ax.set_yticks(positions, names, fontsize=8)
    ax.set_xlabel("seconds (medians)")
    ax.set_title("Time to ready when the pre-warm runs before the start")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
