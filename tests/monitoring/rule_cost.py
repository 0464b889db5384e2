"""What each rule of alerts/pagewarm.rules.yml costs as pods churn, measured with promtool.

The cost of a rule is the series it touches per evaluation: for every series selector in
its expression, the series with a sample in the selector's window (its range, or for an
instant selector the 5 minute lookback; a subquery's range; shifted by its offset). A
fleet where every GPU node's vLLM pod is replaced every two hours (and a node-mode
DaemonSet pod runs on each) is fed to promtool with the real rules file, and the touched
series are counted by Prometheus' own engine at 48 h and at 192 h: a rule whose cost
stays flat touches as many series after eight days of churn as after two. The rule the
file had before (the p90 straight over `rate(pagewarm_load_duration_seconds_bucket[7d])`
of every pod) is measured alongside, as the control that must grow.

    .venv/bin/python -m tests.monitoring.rule_cost       # the table (runs promtool)

tests/monitoring/test_rule_cost.py asserts the same figures with promtool unit tests.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support import REPO

RULES = REPO / "alerts" / "pagewarm.rules.yml"
INTERVAL_MINUTES = 5  # the scrape interval of this fleet: counts of series do not depend on it
HOURS = 194
NODES = ("gpu-a", "gpu-b", "gpu-c")
POD_HOURS = 6
# The exporter's load-time buckets (exporter/collectors/samples.py) and modes.
LE = (
    "1", "2", "5", "10", "15", "20", "30", "45", "60", "90", "120", "180", "300", "600", "900",
    "1800", "+Inf",
)  # fmt: skip
MODES = ("cold", "warm", "prewarm_cold", "prewarm_warm")
EARLY, LATE = 48, 192  # hours: after two days and after eight days of churn
# The rule PagewarmColdLoadRegression stood on before: every pod's buckets over 7 days,
# `rate(pagewarm_load_duration_seconds_bucket[7d])`. Counted as the pods seen in 7 days times
# the bucket series each exports: promtool's engine refuses to load the samples of the
# direct count at 192 h ("query processing would load too many samples"), which is the point.
BEFORE = (
    "before: quantiles over rate(pagewarm_load_duration_seconds_bucket[7d])",
    f'count(count_over_time(pagewarm_load_duration_seconds_bucket{{le="+Inf",mode="cold"}}[7d]))'
    f" * {len(LE) * len(MODES)}",
)
# Series that are not pagewarm's own but that rules read (Prometheus, kube-state-metrics).
OTHER_METRICS = {
    "up",
    "kube_pod_container_status_running",
    "kube_pod_init_container_status_running",
}

_SELECTOR = re.compile(
    r"(?<![\w:\"])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?"
    r"(?:\s*\[(?P<range>[^\]:]+)(?P<step>:[^\]]*)?\])?"
    r"(?:\s*offset\s+(?P<offset>\w+))?"
)


@dataclass(frozen=True)
class Selector:
    text: str  # the metric name and its matchers
    window: str  # the range counted back from the (offset) evaluation time
    offset: str

    def count(self, extra_offset_hours: int = 0) -> str:
        offset = round(hours_of(self.offset)) + extra_offset_hours
        shift = f" offset {offset}h" if offset else ""  # Prometheus refuses "offset 0h"
        return f"count(count_over_time({self.text}[{self.window}]{shift}) > 0)"


def hours_of(duration: str) -> float:
    """Hours of a duration such as 5m, 1h, 1d or 8d1h (promtool prints 48h as 2d)."""
    units = {"d": 24.0, "h": 1.0, "m": 1 / 60}
    parts = re.findall(r"(\d+)([dhm])", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def selectors(expr: str) -> list[Selector]:
    """The series selectors of an expression (names of pagewarm series, recorded series, and
    the few others the rules read), with their windows and offsets."""
    found = []
    for match in _SELECTOR.finditer(expr):
        name = match.group(1)
        if not (name.startswith("pagewarm") or ":" in name or name in OTHER_METRICS):
            continue
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function
        window = match.group("range")
        if window is None:
            window = "5m"  # an instant selector sees the lookback
        elif match.group("step"):
            window = f"{window}5m" if window.endswith(("h", "d")) else window
        found.append(Selector(name + (match.group(2) or ""), window, match.group("offset") or ""))
    return found


def rules() -> list[tuple[str, str]]:
    """(name, expression) of every rule, named by what it records or alerts on (the two
    PagewarmColdLoadRegression rules by their quantile)."""
    document = yaml.safe_load(RULES.read_text())
    named = []
    for group in document["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            if "quantile" in rule.get("labels", {}):
                name += f" (q{rule['labels']['quantile']})"
            named.append((name, rule["expr"]))
    return named


def touched(expr: str, extra_offset_hours: int = 0) -> str:
    """PromQL for the number of series the expression touches (0 when none)."""
    terms = [f"({s.count(extra_offset_hours)} or vector(0))" for s in selectors(expr)]
    return " + ".join(terms) if terms else "vector(0)"


# The fleet.


def _pods() -> Iterator[tuple[str, str, int, int]]:
    """(node, pod, first minute, last minute) of every vLLM pod, replacement staggered per
    node; and one DaemonSet pod per node for the whole time."""
    end = HOURS * 60
    for index, node in enumerate(NODES):
        yield node, f"pagewarm-node-{node}", 0, end
        start = index * 40
        number = 0
        while start < end:
            yield node, f"llama-8b-{node}-{number:03d}", start, min(start + POD_HOURS * 60, end)
            start += POD_HOURS * 60
            number += 1


def _values(start: int, stop: int, value: str = "1") -> str:
    """Samples from minute `start` up to `stop` (exclusive), stale after unless at the end."""
    first, last = start // INTERVAL_MINUTES, (stop - 1) // INTERVAL_MINUTES
    parts = [f"_x{first}"] if first else []
    parts.append(f"{value}x{last - first}")
    if stop < HOURS * 60:
        parts.append("stale")
    return " ".join(parts)


def _series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def input_series() -> list[dict[str, str]]:
    series = []
    for node, pod, start, stop in _pods():
        daemon = pod.startswith("pagewarm-node")
        namespace = "pagewarm" if daemon else "team-a"
        target = f'job="pagewarm",namespace="{namespace}",pod="{pod}",node="{node}"'
        model = f'{target},model="llama-8b"'
        one, zero = _values(start, stop), _values(start, stop, "0")
        series += [
            _series("up", target, one),
            _series(
                "pagewarm_io_scheduler_info", f'{target},device="nvme0n1",scheduler="none"', one
            ),
            _series("pagewarm_model_resident_ratio", model, one),
            _series("pagewarm_model_residency_trusted", model, one),
            _series(
                "kube_pod_init_container_status_running",
                f'job="kube-state-metrics",namespace="{namespace}",pod="{pod}",container="pagewarm"',
                one,
            ),
        ]
        if daemon:  # the node agent: the warm map
            series.append(_series("pagewarm_model_warm", model, one))
            continue
        for mode in MODES:
            # one cold load per pod, in the 60 s bucket; the other modes stay at zero
            loaded = mode == "cold"
            labels = f'{model},mode="{mode}"'
            series.append(
                _series("pagewarm_load_duration_seconds_count", labels, one if loaded else zero)
            )
            for le in LE:
                counted = loaded and float(le.replace("+Inf", "inf")) >= 60
                series.append(
                    _series(
                        "pagewarm_load_duration_seconds_bucket",
                        f'{labels},le="{le}"',
                        one if counted else zero,
                    )
                )
        for outcome in ("ok", "partial", "failed"):
            series.append(
                _series(
                    "pagewarm_prewarm_runs_total",
                    f'{model},outcome="{outcome}"',
                    one if outcome == "ok" else zero,
                )
            )
    return series


def unit_test(expectations: list[dict[str, object]]) -> dict[str, object]:
    return {
        "rule_files": [str(RULES)],
        "evaluation_interval": f"{INTERVAL_MINUTES}m",
        "tests": [
            {
                "interval": f"{INTERVAL_MINUTES}m",
                "input_series": input_series(),
                "promql_expr_test": expectations,
            }
        ],
    }


def run_promtool(promtool: str, test: dict[str, object]) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="pagewarm-rule-cost-") as tmp:
        path = Path(tmp) / "cost.yml"
        path.write_text(yaml.safe_dump(test, width=1000))
        return subprocess.run(
            [promtool, "test", "rules", str(path)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


_GOT = re.compile(
    r'expr: "(?P<expr>(?:[^"\\]|\\.)*)", time: (?P<time>\w+),'
    r"\s+exp: nil\s+got: \{\} (?P<value>\S+)"
)


def figures(promtool: str) -> dict[str, tuple[int, int]]:
    """name -> (series touched at EARLY, at LATE), for every rule and the control:
    promtool's own answers (each expectation is left empty, so promtool reports what it
    got)."""
    exprs = {name: touched(expr) for name, expr in rules()}
    exprs[BEFORE[0]] = BEFORE[1]
    result = run_promtool(
        promtool,
        unit_test(
            [
                {"expr": e, "eval_time": f"{hours}h", "exp_samples": []}
                for e in exprs.values()
                for hours in (EARLY, LATE)
            ]
        ),
    )
    got: dict[tuple[str, int], int] = {}
    for match in _GOT.finditer(result.stdout + result.stderr):
        expr = match.group("expr").encode().decode("unicode_escape")
        got[(expr, round(hours_of(match.group("time"))))] = round(float(match.group("value")))
    table = {}
    for name, expr in exprs.items():
        early, late = got.get((expr, EARLY)), got.get((expr, LATE))
        if early is None or late is None:
            raise AssertionError(f"promtool reported nothing for {name}:\n{result.stderr}")
        table[name] = (early, late)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.monitoring.rule_cost", description=__doc__
    )
    parser.add_argument("--promtool", default="promtool")
    args = parser.parse_args(argv)
    pods = sum(1 for _ in _pods()) - len(NODES)
    print(
        f"{pods} vLLM pods on {len(NODES)} nodes over {HOURS} h (one replaced every "
        f"{POD_HOURS} h per node) + one DaemonSet pod per node; series touched per evaluation"
    )
    print(f"| rule | at {EARLY} h | at {LATE} h |\n| --- | --- | --- |")
    for name, (early, late) in figures(args.promtool).items():
        print(f"| {name} | {early} | {late} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
