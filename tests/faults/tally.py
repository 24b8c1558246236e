"""The fault tally at the end of a run: "faults injected: N, survived: M". A plugin of the
root conftest (``pytest_plugins``), because under pytest-xdist only it runs in the process
that prints the summary; each test's faults reach it as its report's user_properties
(tests/faults/conftest.py: ``faults.inject``)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

TALLY: dict[str, Any] = {"injected": 0, "survived": 0, "open": []}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    n = sum(1 for prop in report.user_properties if prop[0] == "fault")
    if not n:
        return
    TALLY["injected"] += n
    if report.passed:
        TALLY["survived"] += n
    else:  # failed, or an xfail: a bug the fault showed
        TALLY["open"].append(f"{report.nodeid} ({n})")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY["injected"]:
        return
    line = f"faults injected: {TALLY['injected']}, survived: {TALLY['survived']}"
    terminalreporter.write_sep("-", "fault injection (tests/faults)")
    terminalreporter.write_line(line)
    for test in TALLY["open"]:
        terminalreporter.write_line(f"  not survived: {test}")
    out = os.environ.get("NIMBLEML_FAULT_TALLY")  # for a closing note: the figures as JSON
    if out:
        with open(out, "w") as fh:
            json.dump(TALLY, fh)
