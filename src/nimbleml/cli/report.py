"""Verbs that write reports: report (from a monitor store) and demo (the whole job on digits, one page)."""

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
    out: Path = typer.Option(Path("nimble-demo"), help="folder for the page and every artifact"),
    quick: bool = typer.Option(False, help="every stage on smaller settings (about a minute)"),
    force: bool = typer.Option(False, help="replace an earlier demo run in --out"),
) -> None:
    """The whole job on digits: train, distil, optimize, sign, serve, monitor, profile, cost,
    deploy, batch predict; one page, OUT/index.html."""
    from ..demo import run_demo

    _guard(lambda: run_demo(out, quick=quick, force=force, echo=_show))
