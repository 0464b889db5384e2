"""The rules' cost stays flat as pods churn (tests/monitoring/rule_cost.py): every rule
touches as many series after eight days of pods replaced every few hours as after two,
measured by promtool on the real rules file; the rule they replaced grows with the churn."""

from __future__ import annotations

import pytest

from tests.monitoring import rule_cost
from tests.support import require_binary

pytestmark = pytest.mark.slow


def test_every_rule_touches_as_many_series_after_a_week_of_churn() -> None:
    table = rule_cost.figures(require_binary("promtool"))
    before = table.pop(rule_cost.BEFORE[0])
    assert set(table) == {name for name, _ in rule_cost.rules()}
    for name, (early, late) in table.items():
        assert early == late, f"{name}: {early} series at 48 h, {late} at 192 h"
    # The rules really read the fleet (the opt-in expected-set recordings read nothing as
    # shipped, by design).
    expected = {"pagewarm:io_scheduler_expected:info", "pagewarm:model_warm_nodes_expected:count"}
    reading = {n: e for n, (e, _) in table.items() if n not in expected}
    assert all(early > 0 for early in reading.values()), reading
    # The one raw per-pod histogram read (1 h) covers the pods of the last hour only, a
    # fraction of what the old 7 d read covered even after two days.
    increase = table["namespace_model_mode_le:pagewarm_load_duration_seconds_bucket:increase1h"]
    assert increase[0] * 4 < before[0]
    # The control: the old rule's series grow with every day of churn.
    assert before[1] > 3 * before[0], before
