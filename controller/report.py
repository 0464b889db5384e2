"""The bench report: ``storage_load_bench.csv``, ``.md`` and ``.png`` in one directory.

The directory keeps every sample it has ever reported in ``storage_load_bench.jsonl``
(merged by sample id), so re-running the report, from the same store or another, adds to
it and loses nothing; the CSV, markdown and plot are rendered from that archive.

The markdown answers the questions the bench exists for, with numbers computed here: did
pre-warm meaningfully reduce cold load time, how big is its overhead against the time it
saves, and is the trade worth it for a service.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.bench import mode_for_ratio
from controller.samplestore import SampleStore
from controller.units import format_bytes
from exporter.samples import Mode, Outcome, Sample, SampleKind, read_all

CSV_NAME = "storage_load_bench.csv"
MD_NAME = "storage_load_bench.md"
PNG_NAME = "storage_load_bench.png"
ARCHIVE_NAME = "storage_load_bench.jsonl"

# The CSV's columns, in this order for ever; new fields are added at the end.
CSV_COLUMNS = (
    "timestamp",
    "id",
    "kind",
    "source",
    "bench_id",
    "run_index",
    "host",
    "model",
    "model_path",
    "model_bytes",
    "device",
    "scheduler",
    "fstype",
    "mode",
    "declared_mode",
    "mode_verified",
    "loader",
    "target",
    "seconds",
    "resident_ratio_before",
    "resident_ratio_after",
    "prewarm_seconds",
    "prewarm_id",
    "strategy",
    "threads",
    "bytes_read",
    "throughput_bytes_per_second",
    "partial",
    "outcome",
    "error",
    "kernel",
    "memory_total_bytes",
    "read_ahead_bytes",
    "scheduler_note",
    "extra",  # fields this version does not know, as JSON
)
MODE_ORDER = (Mode.COLD, Mode.PREWARM_COLD, Mode.WARM, Mode.PREWARM_WARM, Mode.PARTIAL)
# A reduction of the cold load below this share is not worth an operational change.
MEANINGFUL_REDUCTION = 0.20
MARGINAL_REDUCTION = 0.05
FEW_SAMPLES = 3


# Statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Stats:
    n: int
    median: float
    p90: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats | None:
        if not values:
            return None
        return cls(
            len(values),
            statistics.median(values),
            percentile(values, 0.9),
            min(values),
            max(values),
        )


# Grouping -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class GroupKey:
    model: str
    loader: str
    scheduler: str
    mode_rank: int
    mode: str
    variant: str  # "strategy:threads" of the pre-warm before the load, "" for none

    @property
    def label(self) -> str:
        return f"{self.mode} ({self.variant})" if self.variant else self.mode


def variant_of(sample: Sample) -> str:
    if sample.strategy is None:
        return ""
    return f"{sample.strategy}:{sample.threads}" if sample.threads else sample.strategy


def _mode_rank(mode: Mode) -> int:
    return MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)


def group_loads(samples: Iterable[Sample]) -> dict[GroupKey, list[Sample]]:
    groups: dict[GroupKey, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.kind is not SampleKind.LOAD:
            continue
        key = GroupKey(
            s.model,
            s.loader,
            s.scheduler or "-",
            _mode_rank(s.mode),
            str(s.mode),
            variant_of(s),
        )
        groups[key].append(s)
    return dict(sorted(groups.items()))


def ok_seconds(samples: Iterable[Sample]) -> list[float]:
    return [s.seconds for s in samples if s.outcome is Outcome.OK]


# The pre-warm comparison --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """Pre-warm vs no pre-warm for one model and loader (and pre-warm variant)."""

    model: str
    loader: str
    variant: str
    schedulers: tuple[str, ...]
    cold: Stats
    prewarm_cold: Stats
    prewarm_cost: Stats  # the pre-warm's own seconds before the prewarm_cold loads
    warm: Stats | None
    prewarm_warm: Stats | None
    prewarm_warm_cost: Stats | None  # the pre-warm's seconds on an already warm cache

    @property
    def saved(self) -> float:
        """Time saved on the first request when the pre-warm was done beforehand."""
        return self.cold.median - self.prewarm_cold.median

    @property
    def reduction(self) -> float:
        return self.saved / self.cold.median if self.cold.median > 0 else 0.0

    @property
    def net_serial(self) -> float:
        """Cold load minus (pre-warm + load) when the pre-warm blocks the start."""
        return self.cold.median - (self.prewarm_cost.median + self.prewarm_cold.median)

    @property
    def overlap_needed(self) -> float:
        """Seconds of the engine's start-up the pre-warm must overlap to break even."""
        return max(0.0, -self.net_serial)

    @property
    def overhead_when_warm(self) -> float | None:
        """What running the pre-warm costs when the cache was already warm."""
        if self.warm is None or self.prewarm_warm is None or self.prewarm_warm_cost is None:
            return None
        return self.prewarm_warm_cost.median + (self.prewarm_warm.median - self.warm.median)

    @property
    def break_even_cold_share(self) -> float | None:
        """Share of starts that must be cold for a blocking pre-warm on every start to pay."""
        overhead = self.overhead_when_warm
        if overhead is None or self.net_serial <= 0:
            return None
        if overhead <= 0:
            return 0.0
        return overhead / (self.net_serial + overhead)

    @property
    def separated(self) -> bool:
        """The difference is larger than the spread: every pre-warmed load beat the
        median cold load, and the medians differ by more than the cold p90 spread."""
        spread = self.cold.p90 - self.cold.median
        return self.prewarm_cold.max < self.cold.median and self.saved > spread

    @property
    def few_samples(self) -> bool:
        return min(self.cold.n, self.prewarm_cold.n) < FEW_SAMPLES


def comparisons(samples: Sequence[Sample]) -> list[Comparison]:
    loads = [s for s in samples if s.kind is SampleKind.LOAD and s.outcome is Outcome.OK]
    by_model: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in loads:
        by_model[(s.model, s.loader)].append(s)
    result = []
    for (model, loader), group in sorted(by_model.items()):
        prewarmed = [s for s in group if s.mode is Mode.PREWARM_COLD]
        for variant in sorted({variant_of(s) for s in prewarmed}):
            comparison = _compare(model, loader, variant, group)
            if comparison is not None:
                result.append(comparison)
    return result


def _compare(model: str, loader: str, variant: str, group: list[Sample]) -> Comparison | None:
    pc = [s for s in group if s.mode is Mode.PREWARM_COLD and variant_of(s) == variant]
    schedulers = {s.scheduler for s in pc}

    def of_mode(mode: Mode, *, same_variant: bool = False) -> list[Sample]:
        return [
            s
            for s in group
            if s.mode is mode
            and s.scheduler in schedulers
            and (not same_variant or variant_of(s) == variant)
        ]

    cold = Stats.of(ok_seconds(of_mode(Mode.COLD)))
    prewarm_cold = Stats.of(ok_seconds(pc))
    cost = Stats.of([s.prewarm_seconds for s in pc if s.prewarm_seconds is not None])
    if cold is None or prewarm_cold is None or cost is None:
        return None
    pw = of_mode(Mode.PREWARM_WARM, same_variant=True)
    return Comparison(
        model=model,
        loader=loader,
        variant=variant,
        schedulers=tuple(sorted(s or "-" for s in schedulers)),
        cold=cold,
        prewarm_cold=prewarm_cold,
        prewarm_cost=cost,
        warm=Stats.of(ok_seconds(of_mode(Mode.WARM))),
        prewarm_warm=Stats.of(ok_seconds(pw)),
        prewarm_warm_cost=Stats.of([s.prewarm_seconds for s in pw if s.prewarm_seconds]),
    )


# The verdict --------------------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%"


def conclusion(c: Comparison) -> list[str]:
    """Three answers, each a sentence or two computed from the figures."""
    reduced = c.reduction >= MEANINGFUL_REDUCTION and c.saved > 0
    marginal = MARGINAL_REDUCTION <= c.reduction < MEANINGFUL_REDUCTION
    lines = []
    # 1. Did pre-warm meaningfully reduce the cold load time?
    versus_warm = (
        f", close to a warm load ({_s(c.warm.median)})"
        if c.warm is not None and c.prewarm_cold.median <= c.warm.median * 1.25
        else ""
    )
    if reduced:
        clear = (
            "every pre-warmed load was faster than the median cold one"
            if c.separated
            else "but the runs overlap: more runs would firm this up"
        )
        answer = (
            f"**Yes.** After a pre-warm the load took {_s(c.prewarm_cold.median)} instead of "
            f"{_s(c.cold.median)} cold ({_pct(c.reduction)} less){versus_warm}; {clear}."
        )
    elif marginal:
        answer = (
            f"**Only marginally.** {_s(c.prewarm_cold.median)} after a pre-warm vs "
            f"{_s(c.cold.median)} cold ({_pct(c.reduction)} less)."
        )
    else:
        answer = (
            f"**No.** {_s(c.prewarm_cold.median)} after a pre-warm vs {_s(c.cold.median)} cold "
            f"({_pct(c.reduction)}): this storage serves cold loads about as fast as the page "
            "cache does."
        )
    lines.append(f"1. Did pre-warm meaningfully reduce cold load time? {answer}")
    # 2. How big is its overhead against the time saved?
    ratio = c.prewarm_cost.median / c.saved if c.saved > 0 else math.inf
    if c.saved <= 0:
        cost = f"The pre-warm costs {_s(c.prewarm_cost.median)} and saves nothing."
    elif c.net_serial >= 0:
        cost = (
            f"The pre-warm itself takes {_s(c.prewarm_cost.median)} to save "
            f"{_s(c.saved)} ({ratio:.2f} times the saving): it reads faster than the loader, so "
            f"even run before the start it is {_s(c.net_serial)} ahead."
        )
    else:
        cost = (
            f"The pre-warm itself takes {_s(c.prewarm_cost.median)} to save {_s(c.saved)} "
            f"({ratio:.2f} times the saving): run before the start, it moves the time rather than "
            f"removing it ({_s(-c.net_serial)} behind); it gains only where it overlaps the "
            f"engine's own start-up (at least {_s(c.overlap_needed)} of it)."
        )
    overhead = c.overhead_when_warm
    if overhead is not None and c.prewarm_warm_cost is not None:
        checked = f"the pre-warm took {_s(c.prewarm_warm_cost.median)} to find everything resident"
        cost += (
            f" When the cache is already warm it costs {_s(overhead)} ({checked})."
            if overhead > 0
            else f" When the cache is already warm it costs nothing measurable ({checked})."
        )
    lines.append(f"2. How big is its overhead vs the time saved? {cost}")
    # 3. Is the trade worth it?
    lines.append(f"3. Is the trade worth it? {_worth_it(c, reduced=reduced)}")
    if c.few_samples:
        lines.append(
            f"   *Few samples (n={min(c.cold.n, c.prewarm_cold.n)}): treat these as "
            "indicative; run the bench with more --runs.*"
        )
    return lines


def _worth_it(c: Comparison, *, reduced: bool) -> str:
    spread_cold = c.cold.p90 - c.cold.median
    spread_pre = c.prewarm_cold.p90 - c.prewarm_cold.median
    steadier = spread_cold - spread_pre > 0.05 * c.cold.median
    predictability = (
        f" It also makes start-up more predictable (p90 - median {_s(spread_cold)} cold vs "
        f"{_s(spread_pre)} pre-warmed)."
        if steadier
        else ""
    )
    if not reduced:
        return (
            "**Not here.** The pre-warm adds moving parts for little gain; keep the residency "
            "metrics and alerts, and revisit on slower (network) storage or larger models."
        )
    if c.net_serial >= 0:
        share = c.break_even_cold_share
        if share is None:
            fleet = ""
        elif share <= 0:
            fleet = (
                " On an already warm cache it costs nothing measurable: running it on every "
                "start is free insurance."
            )
        else:
            fleet = (
                f" Run on every start, it pays off once more than {_pct(share)} of starts are cold."
            )
        return (
            f"**Yes.** Even when it gates the start (init container, sidecar `--gate full`), "
            f"time to ready drops by {_s(c.net_serial)} per cold start; overlapping the "
            f"engine's start-up (`--gate none`), by up to {_s(c.saved)}.{fleet}"
            f"{predictability}"
        )
    return (
        f"**Yes, when it overlaps the engine's start-up** (a sidecar with `--gate none`: vLLM "
        f"spends many seconds on imports and CUDA init before it reads weights, which hides "
        f"the pre-warm once that exceeds {_s(c.overlap_needed)}): the first request then waits "
        f"up to {_s(c.saved)} less on a cold node. Gating the start on it (init container, "
        f"`--gate full`) would add {_s(-c.net_serial)} per cold start instead.{predictability}"
    )


# Rendering ----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def csv_row(sample: Sample) -> list[str]:
    row = [_cell(getattr(sample, column)) for column in CSV_COLUMNS[:-1]]
    extra = sample.extra_fields
    row.append(json.dumps(extra, sort_keys=True, default=str) if extra else "")
    return row


def write_csv(samples: Sequence[Sample], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_row(s) for s in samples)
    tmp.replace(path)


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
        ("cold load, median", _s(c.cold.median)),
        (f"prewarm_cold load, median (pre-warm {c.variant})", _s(c.prewarm_cold.median)),
        ("pre-warm itself (its cost), median", _s(c.prewarm_cost.median)),
        (
            "time saved on the first request (cold - prewarm_cold)",
            f"{_s(c.saved)} ({_pct(c.reduction)})",
        ),
        ("net effect if the pre-warm blocks the start (cold - pre-warm - load)", _s(c.net_serial)),
    ]
    if c.warm is not None:
        rows.append(("warm load, median (the floor)", _s(c.warm.median)))
    if c.overhead_when_warm is not None and c.prewarm_warm_cost is not None:
        rows.append(
            (
                "overhead when already warm (pre-warm + prewarm_warm - warm)",
                f"{_s(c.overhead_when_warm)} (pre-warm {_s(c.prewarm_warm_cost.median)})",
            )
        )
    if c.net_serial >= 0:
        even = "immediately: even run before the start it is faster than a cold load"
        share = c.break_even_cold_share
        if share is not None and share > 0:
            even += f"; run on every start, once more than {_pct(share)} of starts are cold"
    else:
        even = (
            f"when at least {_s(c.overlap_needed)} of the pre-warm overlap the engine's "
            "start-up before it reads weights"
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
    share = _pct(gap / cold[worst].median if cold[worst].median else 0)
    if cold[best].max >= cold[worst].min:
        # The slowest run under the "best" scheduler is slower than the fastest under the
        # "worst": the ranges overlap, and a median gap of that size is run-to-run noise.
        return (
            f"No measurable difference between schedulers for cold loads: the medians differ "
            f"by {_s(gap)} ({share}) and the runs' ranges overlap "
            f"({best} {_s(cold[best].min)}-{_s(cold[best].max)}, "
            f"{worst} {_s(cold[worst].min)}-{_s(cold[worst].max)})."
        )
    return (
        f"Cold loads were fastest under **{best}** ({_s(cold[best].median)}), "
        f"{_s(gap)} ({share}) faster than under {worst}, every run of it faster than every "
        f"run under {worst}."
    )


def _prewarm_runs_section(samples: Sequence[Sample]) -> list[str]:
    runs = [s for s in samples if s.kind is SampleKind.PREWARM]
    if not runs:
        return []
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in runs:
        before = s.resident_ratio_before
        state = "unknown" if before is None else str(mode_for_ratio(before))
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
                _count((str(s.declared_mode), str(s.mode)) for s in wrong).items()
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


def _count(items: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for item in items:
        counts[item] += 1
    return counts


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


# The report directory -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportPaths:
    csv: Path
    markdown: Path
    plot: Path | None
    archive: Path
    samples: int


def merge_into_archive(out: Path, samples: Sequence[Sample]) -> list[Sample]:
    """Add ``samples`` to the directory's archive (by id); return everything archived."""
    archive = out / ARCHIVE_NAME
    known = {s.id for s in read_all(archive)}
    new = [s for s in samples if s.id not in known]
    SampleStore(archive).append_many(new)
    return read_all(archive)


def filter_samples(
    samples: Iterable[Sample],
    *,
    model: str | None = None,
    since: datetime | None = None,
    bench_id: str | None = None,
) -> list[Sample]:
    return [
        s
        for s in samples
        if (model is None or s.model == model)
        and (since is None or s.timestamp >= since)
        and (bench_id is None or s.bench_id == bench_id)
    ]


def write_report(
    out: Path,
    samples: Sequence[Sample],
    *,
    source: str,
    model: str | None = None,
    since: datetime | None = None,
    bench_id: str | None = None,
) -> ReportPaths:
    out.mkdir(parents=True, exist_ok=True)
    archived = merge_into_archive(out, samples)
    shown = sorted(
        filter_samples(archived, model=model, since=since, bench_id=bench_id),
        key=lambda s: s.timestamp,
    )
    if not shown:
        raise ValueError("no samples to report (check the store and the filters)")
    csv_path, md_path, png_path = out / CSV_NAME, out / MD_NAME, out / PNG_NAME
    write_csv(shown, csv_path)
    plotted = write_plot(shown, png_path)
    md_path.write_text(render_markdown(shown, plot=PNG_NAME if plotted else None, source=source))
    return ReportPaths(
        csv_path, md_path, png_path if plotted else None, out / ARCHIVE_NAME, len(shown)
    )


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
