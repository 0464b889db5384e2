"""The report's markdown: setup, load time per mode, the comparison and its conclusion, the
pre-warm runs, the I/O scheduler comparison; and the one-line headline."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from controller.report.comparison import (
    Comparison,
    comparisons,
    conclusion,
    format_percent,
    format_seconds,
)
from controller.report.statistics import GroupKey, Stats, group_loads, ok_seconds, variant_of
from controller.sampling import mode_for_ratio, thresholds_for_source
from controller.units import format_bytes
from exporter.samples import Mode, Outcome, Sample, SampleKind


def _distinct(samples: Iterable[Sample], attribute: str) -> str:
    values = sorted({str(v) for s in samples if (v := getattr(s, attribute)) is not None})
    return ", ".join(values) if values else "unknown"


def _setup_table(samples: Sequence[Sample]) -> list[str]:
    sizes = sorted({s.model_bytes for s in samples if s.model_bytes})
    memory = sorted({s.memory_total_bytes for s in samples if s.memory_total_bytes})
    read_ahead = sorted({s.read_ahead_bytes for s in samples if s.read_ahead_bytes})
    first, last = min(s.timestamp for s in samples), max(s.timestamp for s in samples)
    rows = [
        ("host", _distinct(samples, "host")),
        ("kernel", _distinct(samples, "kernel")),
        ("memory", ", ".join(format_bytes(m) for m in memory) or "unknown"),
        ("device", _distinct(samples, "device")),
        ("I/O scheduler", _distinct(samples, "scheduler")),
        ("read-ahead", ", ".join(format_bytes(r) for r in read_ahead) or "unknown"),
        ("filesystem", _distinct(samples, "fstype")),
        ("model", _distinct(samples, "model")),
        ("model path", _distinct(samples, "model_path")),
        ("model size", ", ".join(format_bytes(b) for b in sizes) or "unknown"),
        ("loader", _distinct((s for s in samples if s.kind is SampleKind.LOAD), "loader")),
        ("samples", f"{len(samples)}, from {first.isoformat()} to {last.isoformat()}"),
    ]
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return lines


def _results_table(groups: dict[GroupKey, list[Sample]]) -> list[str]:
    models = {k.model for k in groups}
    loaders = {k.loader for k in groups}
    schedulers = {k.scheduler for k in groups}
    head = []
    if len(models) > 1:
        head.append("model")
    if len(loaders) > 1:
        head.append("loader")
    if len(schedulers) > 1:
        head.append("scheduler")
    columns = [*head, "mode", "pre-warm", "n", "median s", "p90 s", "min s", "max s", "failed"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for key, group in groups.items():
        stats = Stats.of(ok_seconds(group))
        failed = sum(1 for s in group if s.outcome is not Outcome.OK)
        cells = []
        if len(models) > 1:
            cells.append(key.model)
        if len(loaders) > 1:
            cells.append(key.loader)
        if len(schedulers) > 1:
            cells.append(key.scheduler)
        cells += [key.mode, key.variant or "-"]
        if stats is None:
            cells += ["0", "-", "-", "-", "-"]
        else:
            cells += [
                str(stats.n),
                f"{stats.median:.3f}",
                f"{stats.p90:.3f}",
                f"{stats.min:.3f}",
                f"{stats.max:.3f}",
            ]
        cells.append(str(failed))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _comparison_section(c: Comparison, several: bool) -> list[str]:
    lines = []
    if several:
        lines += [f"### {c.model}, loader {c.loader}, pre-warm {c.variant}", ""]
    rows = [
        ("cold load, median", format_seconds(c.cold.median)),
        (
            f"prewarm_cold load, median (pre-warm {c.variant})",
            format_seconds(c.prewarm_cold.median),
        ),
        ("pre-warm itself (its cost), median", format_seconds(c.prewarm_cost.median)),
        (
            "time saved on the first request (cold - prewarm_cold)",
            f"{format_seconds(c.saved)} ({format_percent(c.reduction)})",
        ),
        (
            "net effect if the pre-warm blocks the start (cold - pre-warm - load)",
            format_seconds(c.net_serial),
        ),
    ]
    if c.warm is not None:
        rows.append(("warm load, median (the floor)", format_seconds(c.warm.median)))
    if c.overhead_when_warm is not None and c.prewarm_warm_cost is not None:
        rows.append(
            (
                "overhead when already warm (pre-warm + prewarm_warm - warm)",
                f"{format_seconds(c.overhead_when_warm)} "
                f"(pre-warm {format_seconds(c.prewarm_warm_cost.median)})",
            )
        )
    if c.net_serial >= 0:
        even = "immediately: even run before the start it is faster than a cold load"
        share = c.break_even_cold_share
        if share is not None and share > 0:
            even += (
                f"; run on every start, once more than {format_percent(share)} of starts are cold"
            )
    else:
        even = (
            f"when at least {format_seconds(c.overlap_needed)} of the pre-warm overlap the "
            "engine's start-up before it reads weights"
        )
    rows.append(("break-even", even))
    lines += ["| | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "**Conclusion**", "", *conclusion(c), ""]
    return lines


def _scheduler_section(samples: Sequence[Sample]) -> list[str]:
    loads = [s for s in samples if s.kind is SampleKind.LOAD and s.outcome is Outcome.OK]
    notes = sorted({s.scheduler_note for s in samples if s.scheduler_note})
    schedulers = sorted({s.scheduler for s in loads if s.scheduler})
    if len(schedulers) < 2 and not notes:
        return []
    lines = ["## I/O scheduler comparison", ""]
    lines += [f"> {note}" for note in notes]
    if notes:
        lines.append("")
    if len(schedulers) >= 2:
        lines += [
            "| scheduler | cold median s | cold n | warm median s | warm n |",
            "|" + " --- |" * 5,
        ]
        cold: dict[str, Stats] = {}
        for name in schedulers:
            cells = [name]
            for mode in (Mode.COLD, Mode.WARM):
                values = [s.seconds for s in loads if s.scheduler == name and s.mode is mode]
                stats = Stats.of(values)
                cells += [f"{stats.median:.3f}" if stats else "-", str(len(values))]
                if mode is Mode.COLD and stats:
                    cold[name] = stats
            lines.append("| " + " | ".join(cells) + " |")
        if len(cold) >= 2:
            lines += ["", _scheduler_verdict(cold)]
    lines.append("")
    return lines


def _scheduler_verdict(cold: dict[str, Stats]) -> str:
    """Which scheduler loaded cold fastest, unless the runs say the difference is noise."""
    best = min(cold, key=lambda n: cold[n].median)
    worst = max(cold, key=lambda n: cold[n].median)
    gap = cold[worst].median - cold[best].median
    share = format_percent(gap / cold[worst].median if cold[worst].median else 0)
    if cold[best].max >= cold[worst].min:
        # The slowest run under the "best" scheduler is slower than the fastest under the
        # "worst": the ranges overlap, and a median gap of that size is run-to-run noise.
        return (
            f"No measurable difference between schedulers for cold loads: the medians differ "
            f"by {format_seconds(gap)} ({share}) and the runs' ranges overlap "
            f"({best} {format_seconds(cold[best].min)}-{format_seconds(cold[best].max)}, "
            f"{worst} {format_seconds(cold[worst].min)}-{format_seconds(cold[worst].max)})."
        )
    return (
        f"Cold loads were fastest under **{best}** ({format_seconds(cold[best].median)}), "
        f"{format_seconds(gap)} ({share}) faster than under {worst}, every run of it faster "
        f"than every run under {worst}."
    )


def _prewarm_runs_section(samples: Sequence[Sample]) -> list[str]:
    runs = [s for s in samples if s.kind is SampleKind.PREWARM]
    if not runs:
        return []
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in runs:
        before = s.resident_ratio_before
        # Each command's own thresholds (the sidecar measures later than the bench).
        thresholds = thresholds_for_source(s.source)
        state = "unknown" if before is None else str(mode_for_ratio(before, thresholds))
        groups[(variant_of(s), state)].append(s)
    lines = [
        "## Pre-warm runs",
        "",
        "| pre-warm | cache before | n | median s | median read | median throughput "
        "| partial | failed |",
        "|" + " --- |" * 8,
    ]
    for (variant, state), group in sorted(groups.items()):
        seconds = statistics.median([s.seconds for s in group])
        read = statistics.median([s.bytes_read or 0 for s in group])
        rate = statistics.median([s.throughput_bytes_per_second or 0.0 for s in group])
        partial = sum(1 for s in group if s.partial)
        failed = sum(1 for s in group if s.outcome is not Outcome.OK)
        lines.append(
            f"| {variant or '-'} | {state} | {len(group)} | {seconds:.3f} | "
            f"{format_bytes(read)} | {format_bytes(rate)}/s | {partial} | {failed} |"
        )
    lines.append("")
    return lines


def _mismatch_notes(samples: Sequence[Sample]) -> list[str]:
    wrong = [s for s in samples if s.mode_verified is False]
    unverified = [s for s in samples if s.kind is SampleKind.LOAD and s.mode_verified is None]
    lines = []
    if wrong:
        detail = ", ".join(
            f"{n} declared {d} measured {m}"
            for (d, m), n in sorted(
                Counter((str(s.declared_mode), str(s.mode)) for s in wrong).items()
            )
        )
        lines.append(
            f"> **{len(wrong)} load(s) were not in the state they were declared in** "
            f"({detail}); they are counted under the measured mode."
        )
    if unverified:
        lines.append(
            f"> {len(unverified)} load(s) could not be verified (residency unknown): counted "
            "under the declared mode."
        )
    return [*lines, ""] if lines else []


def render_markdown(samples: Sequence[Sample], *, plot: str | None, source: str) -> str:
    generated = datetime.now(UTC).replace(microsecond=0).isoformat()
    loads = [s for s in samples if s.kind is SampleKind.LOAD]
    lines = [
        "# Storage load bench",
        "",
        f"Generated {generated} by `pagewarm report` from {source}: {len(loads)} loads, "
        f"{len(samples) - len(loads)} pre-warm runs.",
        "",
        "## Setup",
        "",
        *_setup_table(samples),
        "",
        "## Load time per mode",
        "",
        "cold: this model's pages evicted; warm: right after a load; prewarm_cold: evicted, "
        "pre-warmed, loaded; prewarm_warm: pre-warmed while already warm, loaded. "
        "Seconds of successful loads.",
        "",
        *_results_table(group_loads(samples)),
        "",
        *_mismatch_notes(samples),
    ]
    if plot:
        lines += [f"![load time per mode]({plot})", ""]
    lines += ["## Pre-warm vs no pre-warm", ""]
    found = comparisons(samples)
    if not found:
        lines += [
            "Not enough data: this needs successful cold and prewarm_cold loads of the same "
            "model (`pagewarm bench` runs both).",
            "",
        ]
    for c in found:
        lines += _comparison_section(c, several=len(found) > 1)
    lines += _prewarm_runs_section(samples)
    lines += _scheduler_section(samples)
    return "\n".join(lines).rstrip("\n") + "\n"


def headline(samples: Sequence[Sample]) -> str:
    """One line: cold vs prewarm_cold vs warm medians (the demo's and bench's summary)."""
    loads = [s for s in samples if s.kind is SampleKind.LOAD and s.outcome is Outcome.OK]
    parts = []
    for mode in (Mode.COLD, Mode.PREWARM_COLD, Mode.WARM, Mode.PREWARM_WARM):
        stats = Stats.of([s.seconds for s in loads if s.mode is mode])
        if stats is not None:
            parts.append(f"{mode} {stats.median:.2f} s (n={stats.n})")
    costs = [s.prewarm_seconds for s in loads if s.mode is Mode.PREWARM_COLD and s.prewarm_seconds]
    if costs:
        parts.append(f"pre-warm itself {statistics.median(costs):.2f} s")
    return "median load: " + ", ".join(parts) if parts else "no successful loads"
