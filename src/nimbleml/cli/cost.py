"""The cost verb: cloud cost from measured figures (see nimbleml.cost), and the short estimate
``nimbleml bench --cloud`` and ``nimbleml train --cloud`` print at their end."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from ._common import _guard, _show, check_writable


def cost(
    report: Path | None = typer.Option(
        None, "--report", help="nimbleml bench's report.json (or the --report folder)"
    ),
    serve_report: Path | None = typer.Option(
        None, "--serve-report", help="benchmarks/serve.py --json's file: capacity over HTTP"
    ),
    train_report: Path | None = typer.Option(
        None, "--train-report", help="nimbleml train's report.json (or its --checkpoint-dir)"
    ),
    cloud: str | None = typer.Option(
        None, "--cloud", help="comma-separated clouds of the catalog, e.g. aws,gcp [all]"
    ),
    spot: bool = typer.Option(False, "--spot", help="spot prices and savings beside on-demand"),
    sla_p99_ms: float | None = typer.Option(
        None,
        "--sla-p99-ms",
        help="p99 latency each instance must meet, ms [the serve report's target, else 25]",
    ),
    rps: float | None = typer.Option(
        None, "--rps", help="target request rate: instances needed and the fleet's $/h"
    ),
    headroom: float = typer.Option(
        0.0, help="share of each instance's capacity kept spare (0.2: run at 80%)"
    ),
    prices: Path | None = typer.Option(
        None, "--prices", help="a price CSV in place of the built-in catalog (same columns)"
    ),
    measured_on: str | None = typer.Option(
        None,
        "--measured-on",
        help="the catalog instance the reports were measured on: its "
        "rows are measured, not estimated",
    ),
    json_path: Path | None = typer.Option(None, "--json", help="write the estimate as JSON here"),
) -> None:
    """Cost per hour, per 1M predictions and per training run on cloud instances."""
    from ..cost import estimate_cost

    def go() -> None:
        if json_path:
            check_writable(json_path)
        if report is None and serve_report is None and train_report is None:
            raise ConfigError(
                "nothing to estimate from: give --report (nimbleml bench), --serve-report "
                "(benchmarks/serve.py --json) or --train-report (nimbleml train)"
            )
        with warnings.catch_warnings():  # the estimate carries them: shown once, below
            warnings.simplefilter("ignore")
            est = estimate_cost(
                report, serve_report=serve_report, train_report=train_report, clouds=cloud,
                spot=spot, sla_p99_ms=sla_p99_ms, rps=rps, headroom=headroom, prices=prices,
                measured_on=measured_on,
            )  # fmt: skip
        problem = est.problem()
        if problem:
            raise ConfigError(problem)
        for line in est.warnings:
            typer.echo(f"warning: {line}", err=True)
        _show(est.table(warnings=False))  # said on stderr already
        if json_path:
            est.to_json(json_path)
            _show(f"estimate written to {json_path}")

    _guard(go)


def after(cloud: str, what: str, **reports: Any) -> None:
    """The estimate at the end of ``nimbleml bench`` / ``train`` with ``--cloud``: printed,
    or one line saying why there is none (the run itself succeeded; this never fails it)."""
    from ..cost import estimate_cost
    from ..errors import NimbleError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = estimate_cost(clouds=cloud, **reports)
    except NimbleError as exc:
        _show(f"\ncost: not estimated: {exc}")
        return
    problem = est.problem()
    _show("")
    _show(f"cost: not estimated: {problem}" if problem else f"cost ({what}):\n{est.table()}")
    _show("more: nimbleml cost --help (--rps, --spot, --sla-p99-ms, --prices)")


def check_clouds(cloud: str | None) -> None:
    """--cloud of bench / train checked before their work (not minutes later)."""
    if cloud is not None:
        from ..cost import load_catalog

        load_catalog().check_clouds(tuple(c.strip().lower() for c in cloud.split(",") if c))
