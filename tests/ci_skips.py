"""With CI=true, a skipped PostgreSQL or browser test fails the run: CI must not go green on
a machine that silently tested less. Elsewhere such a skip is only reported (its reason names
what to install or set).

Hooks, imported by tests/conftest.py; a test is concerned if it carries the `postgres` marker
(conftest adds it to every test that uses the `postgres_server` fixture) or `browser`.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

MUST_RUN_IN_CI = ("postgres", "browser")
_TAG = ("must_not_skip", True)

# Skipped reports of concerned tests, in the process that gathers the results (the xdist
# controller, or the only process): a worker's reports reach it with their user_properties.
_skipped: list[pytest.TestReport] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and any(item.get_closest_marker(m) for m in MUST_RUN_IN_CI):
        report.user_properties.append(_TAG)
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and _TAG in report.user_properties:
        _skipped.append(report)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if in_ci() and _skipped and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (in_ci() and _skipped):
        return
    terminalreporter.section("CI=true: PostgreSQL and browser tests may not skip", red=True)
    for report in _skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        terminalreporter.line(f"SKIPPED {report.nodeid}: {str(reason).removeprefix('Skipped: ')}")
