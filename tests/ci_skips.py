"""Under CI (``CI`` set to true, 1 or yes, any case) a skip is a failure: a test that did
not run proves nothing, whatever the reason (a missing binary, torch, a cgroup, a block
device). Its reason is kept in the report. Skips at collection (``importorskip`` at
module level) fail the same way; xfail is not a skip and is left alone.

The hooks are imported by tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from tests.support import in_ci


def fail_the_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not in_ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    where, reason = "", str(report.longrepr)
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        path, line, reason = report.longrepr
        where = f"{path}:{line}: "
    report.outcome = "failed"
    report.longrepr = f"{where}{reason} (a skip is a failure under CI={os.environ['CI']})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    fail_the_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    fail_the_skip(report)
    return report
