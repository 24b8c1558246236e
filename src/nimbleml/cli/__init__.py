"""The nimbleml command line: one verb per stage, thin over the Python API.

One module per verb family (compress.py: compress, bench, inspect, optimize; serve.py;
report.py: report, demo; ensemble.py); what they share (the one-line error handler,
progress, data loading) lives in _common.py. User errors print one line (``error: ...``)
and exit with code 2, without a traceback.
"""

from __future__ import annotations

import typer

from . import compress, ensemble, report, serve

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make trained models small and fast, and prove it.",
)


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="show the traceback of an internal error"),
) -> None:
    """Make trained models small and fast, and prove it."""
    from ._common import DEBUG

    DEBUG["on"] = debug


for verb in (
    compress.compress, compress.bench, compress.inspect, compress.optimize, report.report,
    serve.serve, ensemble.ensemble, report.demo,
):  # fmt: skip
    app.command()(verb)


def main() -> None:
    app()


__all__ = ["app", "main"]
