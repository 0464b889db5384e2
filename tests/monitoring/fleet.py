"""A fleet of vLLM pods for the load-duration rules, written as a promtool unit test
(alerts/tests/cold_load_regression.yml).

A cold start is a new pod on a node whose page cache lacks the model: every load here is a
pod of its own, on one of three GPU nodes, scraped every minute with the labels a
ServiceMonitor gives it (job, namespace, pod, node, instance), whose histogram series exist
from the pod's start at zero (as the exporter makes them) and go stale when the pod goes,
six hours later. So the rules see what they see in a cluster: many short-lived series per
model, never one long one.

    .venv/bin/python -m tests.monitoring.fleet            # rewrite the YAML
    .venv/bin/python -m tests.monitoring.fleet --check    # exit 1 when it is stale

tests/monitoring/test_rules.py checks that the committed file is what this writes. The
stories and the expectations are in STORIES and EXPECTATIONS below; histogram_quantile
interpolates inside the bucket a rank falls into, and every story's loads sit in one of
its three buckets (the others would be constant), which is what the expected values follow.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import yaml

from tests.support import REPO

OUTPUT = REPO / "alerts" / "tests" / "cold_load_regression.yml"
RULES = REPO / "alerts" / "pagewarm.rules.yml"
HOUR = 60  # minutes: one sample a minute
DAY = 24 * HOUR
ONSET = 192 * HOUR  # day 8: the regressions start
END = 202 * HOUR  # the last evaluation is at 201 h
POD_LIFETIME = 6 * HOUR
NODES = ("gpu-a", "gpu-b", "gpu-c")


@dataclass(frozen=True)
class Story:
    namespace: str
    model: str
    mode: str
    buckets: tuple[str, str]  # the upper bounds of the fast and the slow bucket
    loads: tuple[tuple[int, bool], ...]  # (minute, slow)
    comment: str

    def series(self) -> Iterator[tuple[str, str]]:
        """(series, values) of every pod: one load each, one minute after the pod starts."""
        for number, (minute, slow) in enumerate(self.loads):
            start, end = minute - 1, min(minute - 1 + POD_LIFETIME, END)
            node = NODES[number % len(NODES)]
            digest = hashlib.sha256(f"{self.namespace}{self.model}{self.mode}{number}".encode())
            pod = f"{self.model}-{digest.hexdigest()[:10]}"
            instance = f"10.{NODES.index(node)}.{number // 250}.{number % 250 + 1}:9741"
            labels = (
                f'job="pagewarm",namespace="{self.namespace}",pod="{pod}",node="{node}",'
                f'instance="{instance}",model="{self.model}",mode="{self.mode}"'
            )
            for index, le in enumerate((*self.buckets, "+Inf")):
                counted = index >= (1 if slow else 0)  # a slow load is not in the fast bucket
                yield (
                    f'pagewarm_load_duration_seconds_bucket{{{labels},le="{le}"}}',
                    _values(start, minute, end, 1 if counted else 0),
                )


def _values(start: int, load: int, end: int, after: int) -> str:
    """Missing before the pod, 0 until its load, then `after`, stale once it is gone."""
    parts = [f"_x{start}"] if start else []
    parts.append(f"0x{load - start - 1}")
    parts.append(f"{after}x{end - load - 1}")
    if end < END:
        parts.append("stale")
    return " ".join(parts)


def _schedule(
    fast_until: int = ONSET, slow_from: int | None = ONSET
) -> tuple[tuple[int, bool], ...]:
    """The fleet's usual rhythm: a cold start every 6 h for a week, every 2 h on day 7 (the
    day before the regressions), hourly from ONSET; loads at half past the hour."""
    loads = [(m + 30, False) for m in range(0, min(fast_until, 168 * HOUR), 6 * HOUR)]
    loads += [(m + 30, False) for m in range(168 * HOUR, fast_until, 2 * HOUR)]
    if slow_from is not None:
        loads += [(m + 30, True) for m in range(slow_from, END, HOUR)]
    return tuple(loads)


def _fast_all_along() -> tuple[tuple[int, bool], ...]:
    return _schedule(fast_until=END, slow_from=None)


STORIES = (
    Story(
        "team-a",
        "llama-8b",
        "cold",
        ("30", "90"),
        _schedule(),
        "loads in (0, 30] s, from 192 h in (30, 90] s  -> fires, p90 then median",
    ),
    Story(
        "team-b",
        "llama-8b",
        "cold",
        ("30", "90"),
        _fast_all_along(),
        "the same model in another namespace, fast     -> silent: a namespace's own baseline",
    ),
    Story(
        "team-a",
        "qwen-7b",
        "prewarm_cold",
        ("20", "60"),
        _schedule(),
        "(0, 20] s, then (20, 60] s                    -> fires: pre-warmed starts count",
    ),
    Story(
        "team-a",
        "llama-8b",
        "warm",
        ("10", "90"),
        _schedule(),
        "(0, 10] s, then (10, 90] s                    -> silent: not cold starts",
    ),
    Story(
        "team-a",
        "tiny-1b",
        "cold",
        ("2", "10"),
        _schedule(),
        "(0, 2] s, then (2, 10] s (5x)                 -> silent: under the 30 s floor",
    ),
    Story(
        "team-a",
        "slow-70b",
        "cold",
        ("60", "90"),
        _schedule(fast_until=0, slow_from=0),
        "(60, 90] s all along                          -> silent: its own baseline",
    ),
    Story(
        "team-a",
        "sparse-8b",
        "cold",
        ("30", "90"),
        (
            *_schedule(fast_until=186 * HOUR, slow_from=None),
            (ONSET + 30, True),
            (ONSET + 2 * HOUR + 30, True),
        ),
        "normal until 186 h, then 2 slow loads only    -> silent: too few loads",
    ),
    Story(
        "team-a",
        "burst-8b",
        "cold",
        ("30", "90"),
        (*_fast_all_along(), *((195 * HOUR + 10, True),) * 3, *((196 * HOUR + 10, False),) * 40),
        "3 slow loads at 195:10, 40 fast at 196:10     -> silent: shorter than for: 1h",
    ),
    Story(
        "team-a",
        "new-8b",
        "cold",
        ("30", "90"),
        _schedule(fast_until=0),
        "first deployed at 192 h, slow                 -> silent: no baseline yet",
    ),
)


RUNBOOK = (
    "https://github.com/pagewarm/pagewarm/blob/main/docs/runbooks/PagewarmColdLoadRegression.md"
)
P90 = (
    "The p90 of {mode} loads of model {model} in namespace {namespace} over the last 6 h is "
    "{value}, more than 1.5 times its baseline (the p90 of the 7 days before yesterday: "
    "{baseline}). New pods of this model start slower than they used to: check the I/O "
    "scheduler, the storage behind the model volume and whether pre-warm still runs."
)
P50 = (
    "The median of {mode} loads of model {model} in namespace {namespace} over the last 6 h "
    "is {value}, more than 1.5 times its baseline (the median of the 7 days before "
    "yesterday: {baseline}). Most new pods of this model start slower than they used to: "
    "check the I/O scheduler, the storage behind the model volume and whether pre-warm "
    "still runs."
)


def _alert(model: str, mode: str, quantile: str, value: str, baseline: str) -> str:
    name = "p90" if quantile == "0.9" else "median"
    text = (P90 if quantile == "0.9" else P50).format(
        mode=mode, model=model, namespace="team-a", value=value, baseline=baseline
    )
    return f"""\
          - exp_labels:
              severity: warning
              quantile: "{quantile}"
              namespace: team-a
              model: {model}
              mode: {mode}
            exp_annotations:
              summary: "Cold loads of {model} ({mode}, team-a) regressed: {name} {value}"
              description: "{text}"
              runbook_url: {RUNBOOK}
"""


def _sample(metric: str, labels: str, value: float) -> str:
    return f"""\
          - labels: '{metric}{{{labels}}}'
            value: {value:g}
"""


Q = "namespace_model_mode:pagewarm_load_duration_seconds"
PENDING_BURST = (
    'alertname="PagewarmColdLoadRegression",alertstate="pending",model="burst-8b",mode="cold",'
    'namespace="team-a",quantile="0.9",severity="warning"'
)
A = 'namespace="team-a"'

# What the rules must make of the stories. Times are hours since the start; the 6 h and 7 d
# windows add up the 1 h increases at the full hours they end on (alerts/pagewarm.rules.yml).
EXPECTATIONS = f"""\
    promql_expr_test:
      # Day 7, before any regression: each baseline is the quantile of the fast bucket
      # (p90: 0.9 of its upper bound), the slow one's for slow-70b; new-8b has none.
      - expr: {Q}:p90_7d
        eval_time: 168h
        exp_samples:
{_sample(Q + ":p90_7d", A + ',model="llama-8b",mode="cold"', 27)}\
{_sample(Q + ":p90_7d", 'namespace="team-b",model="llama-8b",mode="cold"', 27)}\
{_sample(Q + ":p90_7d", A + ',model="qwen-7b",mode="prewarm_cold"', 18)}\
{_sample(Q + ":p90_7d", A + ',model="llama-8b",mode="warm"', 9)}\
{_sample(Q + ":p90_7d", A + ',model="tiny-1b",mode="cold"', 1.8)}\
{_sample(Q + ":p90_7d", A + ',model="slow-70b",mode="cold"', 87)}\
{_sample(Q + ":p90_7d", A + ',model="sparse-8b",mode="cold"', 27)}\
{_sample(Q + ":p90_7d", A + ',model="burst-8b",mode="cold"', 27)}\
      # Eight hours into the regression the 6 h window holds slow loads only; the same
      # model in team-b is still at its normal. One series per namespace, not per pod.
      - expr: {Q}:p90_6h{{model="llama-8b",mode="cold"}}
        eval_time: 200h
        exp_samples:
{_sample(Q + ":p90_6h", A + ',model="llama-8b",mode="cold"', 84)}\
{_sample(Q + ":p90_6h", 'namespace="team-b",model="llama-8b",mode="cold"', 27)}\
      # A model first deployed at 192:29 has no value at a full hour yet at 192:45: the last
      # hour stands in for its 6 h window, so its first loads are seen at once.
      - expr: {Q}:p90_6h{{model="new-8b"}}
        eval_time: 192h45m
        exp_samples:
{_sample(Q + ":p90_6h", A + ',model="new-8b",mode="cold"', 84)}\
      # No load in the last hour: nothing is recorded (not NaN). sparse-8b's last load was
      # at 194:30.
      - expr: {Q}:p90_1h{{model="sparse-8b"}}
        eval_time: 195h
        exp_samples:
{_sample(Q + ":p90_1h", A + ',model="sparse-8b",mode="cold"', 84)}\
      - expr: {Q}:p90_1h{{model="sparse-8b"}}
        eval_time: 196h
        exp_samples: []
      # The load counts behind the minimum-count conditions: each pod counts once, however
      # many hours its series lives on.
      - expr: {Q}_count:increase6h{{model="sparse-8b"}} < 3
        eval_time: 197h
        exp_samples:
{_sample(Q + "_count:increase6h", A + ',model="sparse-8b",mode="cold"', 2)}\
      - expr: count({Q}_count:increase7d offset 1d >= 5)
        eval_time: 200h
        exp_samples:
          - value: 8
      # burst-8b's condition really was true, for the hour its slow loads were alone in the
      # window: pending at 196 h, gone at 197 h (so its silence is for: 1h at work).
      - expr: ALERTS{{alertname="PagewarmColdLoadRegression",model="burst-8b"}}
        eval_time: 196h
        exp_samples:
{_sample("ALERTS", PENDING_BURST, 1)}\
      - expr: ALERTS{{alertname="PagewarmColdLoadRegression",model="burst-8b"}}
        eval_time: 197h
        exp_samples: []

    alert_rule_test:
      # The first slow loads (192:30): the p90 conditions of llama-8b and qwen-7b hold from
      # 193 h, pending; nothing fires yet.
      - alertname: PagewarmColdLoadRegression
        eval_time: 193h30m
        exp_alerts: []
      # An hour later the p90 rules fire, for the regressed models and nothing else; the
      # medians are not above 1.5x their baseline and the 30 s floor yet.
      - alertname: PagewarmColdLoadRegression
        eval_time: 194h
        exp_alerts:
{_alert("llama-8b", "cold", "0.9", "1m 18s", "27s")}\
{_alert("qwen-7b", "prewarm_cold", "0.9", "52s", "18s")}\
      # The medians hold from 195 h and fire at 196 h. burst-8b is pending (196 h), tiny-1b
      # (under the floor), slow-70b (slow all along), llama-8b warm, llama-8b in team-b,
      # sparse-8b (2 loads) and new-8b (no baseline) stay silent.
      - alertname: PagewarmColdLoadRegression
        eval_time: 196h30m
        exp_alerts:
{_alert("llama-8b", "cold", "0.5", "52.5s", "15s")}\
{_alert("llama-8b", "cold", "0.9", "1m 22s", "27s")}\
{_alert("qwen-7b", "prewarm_cold", "0.5", "35s", "10s")}\
{_alert("qwen-7b", "prewarm_cold", "0.9", "55s", "18s")}\
      - alertname: PagewarmColdLoadRegression
        eval_time: 201h
        exp_alerts:
{_alert("llama-8b", "cold", "0.5", "1m 0s", "15s")}\
{_alert("llama-8b", "cold", "0.9", "1m 24s", "27s")}\
{_alert("qwen-7b", "prewarm_cold", "0.5", "40s", "10s")}\
{_alert("qwen-7b", "prewarm_cold", "0.9", "56s", "18s")}\
"""


def render() -> str:
    stories = "\n".join(
        f"#   {f'{s.model} {s.mode} ({s.namespace})':31} {what.strip():43} -> {outcome.strip()}"
        for s in STORIES
        for what, outcome in [s.comment.split("->")]
    )
    series = "".join(
        f"      - {{series: '{name}', values: '{values}'}}\n"
        for story in STORIES
        for name, values in story.series()
    )
    pods = sum(len(story.loads) for story in STORIES)
    groups = "".join(
        f"  - {group['name']}\n" for group in yaml.safe_load(RULES.read_text())["groups"]
    )
    return f"""\
# PagewarmColdLoadRegression and the load-duration recording rules it stands on.
# GENERATED by tests/monitoring/fleet.py (python -m tests.monitoring.fleet): edit that.
#
# {pods} pods on {len(NODES)} nodes over {END // HOUR} hours, one sample a minute. Every cold start
# is a pod of its own, whose histogram exists from its start at zero and goes stale when
# the pod goes, six hours later. A cold start every 6 h for a week, every 2 h on day 7,
# hourly once the regressions start at 192 h (day 8), at half past the hour:
{stories}

rule_files:
  - ../pagewarm.rules.yml

# Scraped every minute; rules evaluated every 5 minutes, which changes nothing the 1 h tiles
# record (the 6 h and 7 d windows read them at full hours) and keeps nine days fast.
evaluation_interval: 5m

# Groups in the rules file's order, which is their dependency order (no group reads a series
# recorded by a later one): without this list promtool 2.42 runs them in Go map order, a
# new order every run (tests/monitoring/test_rules.py checks the list).
group_eval_order:
{groups}
tests:
  - interval: 1m
    input_series:
{series}
{EXPECTATIONS}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.monitoring.fleet", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT}: out of date; run python -m tests.monitoring.fleet")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
