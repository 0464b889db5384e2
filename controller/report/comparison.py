"""Pre-warm vs no pre-warm for one model and loader (``Comparison``), and the verdict: the
three questions the bench exists for, answered in sentences computed from the figures."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from controller.report.statistics import Stats, ok_seconds, variant_of
from exporter.samples import Mode, Outcome, Sample, SampleKind

# A reduction of the cold load below this share is not worth an operational change.
MEANINGFUL_REDUCTION = 0.20
MARGINAL_REDUCTION = 0.05
FEW_SAMPLES = 3


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
    prewarm_cold_loads = [
        s for s in group if s.mode is Mode.PREWARM_COLD and variant_of(s) == variant
    ]
    schedulers = {s.scheduler for s in prewarm_cold_loads}

    def of_mode(mode: Mode, *, same_variant: bool = False) -> list[Sample]:
        return [
            s
            for s in group
            if s.mode is mode
            and s.scheduler in schedulers
            and (not same_variant or variant_of(s) == variant)
        ]

    cold = Stats.of(ok_seconds(of_mode(Mode.COLD)))
    prewarm_cold = Stats.of(ok_seconds(prewarm_cold_loads))
    cost = Stats.of(
        [s.prewarm_seconds for s in prewarm_cold_loads if s.prewarm_seconds is not None]
    )
    if cold is None or prewarm_cold is None or cost is None:
        return None
    prewarm_warm_loads = of_mode(Mode.PREWARM_WARM, same_variant=True)
    return Comparison(
        model=model,
        loader=loader,
        variant=variant,
        schedulers=tuple(sorted(s or "-" for s in schedulers)),
        cold=cold,
        prewarm_cold=prewarm_cold,
        prewarm_cost=cost,
        warm=Stats.of(ok_seconds(of_mode(Mode.WARM))),
        prewarm_warm=Stats.of(ok_seconds(prewarm_warm_loads)),
        prewarm_warm_cost=Stats.of(
            [s.prewarm_seconds for s in prewarm_warm_loads if s.prewarm_seconds]
        ),
    )


# The verdict --------------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """Seconds as the report's sentences and tables write them."""
    return f"{seconds:.2f} s"


def format_percent(share: float) -> str:
    """A share (0..1) as a whole percentage."""
    return f"{share * 100:.0f}%"


def conclusion(c: Comparison) -> list[str]:
    """Three answers, each a sentence or two computed from the figures."""
    reduced = c.reduction >= MEANINGFUL_REDUCTION and c.saved > 0
    marginal = MARGINAL_REDUCTION <= c.reduction < MEANINGFUL_REDUCTION
    lines = []
    # 1. Did pre-warm meaningfully reduce the cold load time?
    versus_warm = (
        f", close to a warm load ({format_seconds(c.warm.median)})"
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
            f"**Yes.** After a pre-warm the load took {format_seconds(c.prewarm_cold.median)} "
            f"instead of {format_seconds(c.cold.median)} cold ({format_percent(c.reduction)} "
            f"less){versus_warm}; {clear}."
        )
    elif marginal:
        answer = (
            f"**Only marginally.** {format_seconds(c.prewarm_cold.median)} after a pre-warm vs "
            f"{format_seconds(c.cold.median)} cold ({format_percent(c.reduction)} less)."
        )
    else:
        answer = (
            f"**No.** {format_seconds(c.prewarm_cold.median)} after a pre-warm vs "
            f"{format_seconds(c.cold.median)} cold ({format_percent(c.reduction)}): this storage "
            "serves cold loads about as fast as the page cache does."
        )
    lines.append(f"1. Did pre-warm meaningfully reduce cold load time? {answer}")
    # 2. How big is its overhead against the time saved?
    ratio = c.prewarm_cost.median / c.saved if c.saved > 0 else math.inf
    if c.saved <= 0:
        cost = f"The pre-warm costs {format_seconds(c.prewarm_cost.median)} and saves nothing."
    elif c.net_serial >= 0:
        cost = (
            f"The pre-warm itself takes {format_seconds(c.prewarm_cost.median)} to save "
            f"{format_seconds(c.saved)} ({ratio:.2f} times the saving): it reads faster than the "
            f"loader, so even run before the start it is {format_seconds(c.net_serial)} ahead."
        )
    else:
        cost = (
            f"The pre-warm itself takes {format_seconds(c.prewarm_cost.median)} to save "
            f"{format_seconds(c.saved)} ({ratio:.2f} times the saving): run before the start, it "
            f"moves the time rather than removing it ({format_seconds(-c.net_serial)} behind); it "
            f"gains only where it overlaps the engine's own start-up (at least "
            f"{format_seconds(c.overlap_needed)} of it)."
        )
    overhead = c.overhead_when_warm
    if overhead is not None and c.prewarm_warm_cost is not None:
        checked = (
            f"the pre-warm took {format_seconds(c.prewarm_warm_cost.median)} to find everything "
            "resident"
        )
        cost += (
            f" When the cache is already warm it costs {format_seconds(overhead)} ({checked})."
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
        f" It also makes start-up more predictable (p90 - median {format_seconds(spread_cold)} "
        f"cold vs {format_seconds(spread_pre)} pre-warmed)."
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
                f" Run on every start, it pays off once more than {format_percent(share)} of "
                "starts are cold."
            )
        return (
            f"**Yes.** Even when it gates the start (init container, sidecar `--gate full`), "
            f"time to ready drops by {format_seconds(c.net_serial)} per cold start; overlapping "
            f"the engine's start-up (`--gate none`), by up to {format_seconds(c.saved)}.{fleet}"
            f"{predictability}"
        )
    return (
        f"**Yes, when it overlaps the engine's start-up** (a sidecar with `--gate none`: vLLM "
        f"spends many seconds on imports and CUDA init before it reads weights, which hides "
        f"the pre-warm once that exceeds {format_seconds(c.overlap_needed)}): the first request "
        f"then waits up to {format_seconds(c.saved)} less on a cold node. Gating the start on it "
        f"(init container, `--gate full`) would add {format_seconds(-c.net_serial)} per cold "
        f"start instead.{predictability}"
    )
