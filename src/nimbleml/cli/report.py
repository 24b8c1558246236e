"""Verbs that write reports: report (from a monitor store) and demo (end to end on toy data)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import _guard, _show, check_writable


def report(
    monitor: str = typer.Option(
        ..., "--monitor", help="monitor store, e.g. sqlite:///monitor.db or a .db path"
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="folder for the charts and insights.txt"
    ),
) -> None:
    """Charts (latency, throughput, accuracy, resources) and insights from a monitor store."""
    from ..monitor.report import write_report

    def go() -> None:
        check_writable(output, folder=True)
        url = monitor if "://" in monitor else f"sqlite:///{monitor}"
        for path in write_report(url, output):
            _show(f"wrote {path}")
        _show((output / "insights.txt").read_text().rstrip())

    _guard(go)


def demo(
    out: Path = typer.Option(Path("nimble-demo"), help="folder for packages and the report"),
    quick: bool = typer.Option(False, help="shorter timing (for tests)"),
) -> None:
    """Train small models on scikit-learn's datasets, compress them, benchmark, report."""
    from ..demo import run_demo

    _guard(lambda: run_demo(out, quick=quick, echo=_show))
