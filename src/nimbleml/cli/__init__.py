"""The nimbleml command line: one verb per stage, thin over the Python API.

One module per verb family (compress.py: compress, bench, inspect, optimize; serve.py;
report.py: report, demo; ensemble.py; sign.py: keygen, sign, verify; train.py, with
_train_run.py for one training process; bench_train.py; cost.py); what they share (the one-line
error handler, progress, data loading) lives in _common.py. User errors print one
line (``error: ...``) and exit with code 2, without a traceback.
"""

from __future__ import annotations

from typing import Any

import typer

from . import (
    bench_train,
    compress,
    cost,
    deploy,
    distill,
    ensemble,
    nas,
    predict,
    profile,
    report,
    serve,
    sign,
    train,
    tune,
)
from ._help import PlainGroup, examples

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=PlainGroup,
    help="Make trained models small and fast, and prove it.",
)


def _version(value: bool) -> None:
    if value:
        from .._version import __version__

        typer.echo(f"nimbleml {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="show the traceback of an internal error"),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Make trained models small and fast, and prove it."""
    from ._common import DEBUG, show_warnings_plainly

    DEBUG["on"] = debug
    show_warnings_plainly()


EXAMPLES: dict[Any, tuple[str, ...]] = {
    compress.compress: (
        "nimbleml compress model.ts --val val.npz -o model.nimble",
        "nimbleml compress model.onnx --quantize int8-static --calib calib.npy --val val.npz --max-drop 0.005 -o model.nimble",
    ),
    compress.bench: (
        "nimbleml bench model.ts model.nimble --data val.npz",
        "nimbleml bench model.nimble --data val.npz --batch-size 1,64 --json bench.json --report bench/",
    ),
    compress.inspect: ("nimbleml inspect model.nimble",),
    compress.optimize: (
        "nimbleml optimize model.ts --val val.npz -o best.nimble",
        "nimbleml optimize model.onnx --val val.npz --objective throughput --batch-size 64 --time-budget 300 -o best.nimble --report search/",
    ),
    report.report: ("nimbleml report --monitor monitor.db -o report/",),
    predict.predict: (
        "nimbleml predict model.nimble --data rows.parquet --out predictions.parquet",
        "nimbleml predict model.nimble --data rows.csv --id-column id --batch-size 512 --out predictions.csv",
        "nimbleml predict model.nimble --data /shared/rows.parquet --out /shared/predictions.parquet --ray auto --workers 8",
    ),
    serve.serve: (
        "nimbleml serve model.nimble",
        "nimbleml serve digits=model.nimble --port 8080 --workers 2 --api-key SECRET",
        "nimbleml serve --config serve.yaml",
    ),
    deploy.deploy: (
        "nimbleml deploy model.nimble --target docker -o deploy/",
        "nimbleml deploy digits=model.nimble iris.nimble --target k8s --serve-report serve.json -o k8s/",
    ),
    ensemble.ensemble: (
        "nimbleml ensemble a.nimble b.nimble --data val.npz",
        "nimbleml ensemble --config ensemble.yaml --data val.npz --json ensemble.json",
    ),
    train.train: (
        "nimbleml train --model mypkg.models:build --data train.npz --val val.npz --epochs 20 --checkpoint-dir runs/x",
        "nimbleml train --config train.yaml --amp --batch-size 64 --grad-accum 4 --scheduler cosine --nproc 2 --optimize --max-drop 0.01 -o model.nimble",
    ),
    distill.distill: (
        "nimbleml distill --teacher mypkg.models:trained --data train.npz --val val.npz -o student.nimble",
        "nimbleml distill --teacher teacher.nimble --student mypkg.models:small --data train.npz --val val.npz --temperature 4 --alpha 0.7 --epochs 30 --report distill/",
    ),
    tune.tune: (
        "nimbleml tune --config tune.yaml",
        "nimbleml tune --config tune.yaml --storage postgresql://user:pass@db/optuna --n-trials 100 --workers 2",
    ),
    nas.nas: (
        "nimbleml nas --family mlp --data train.npz --val val.npz --max-latency-ms 0.5 -o front/",
        "nimbleml nas --data train.npz --val val.npz --n-trials 60 --time-budget 900 --storage postgresql://user:pass@db/optuna -o front/",
    ),
    bench_train.bench_train: (
        "nimbleml bench-train --model mypkg.models:build --data train.npz --val val.npz --compare-amp -o bench/",
        "nimbleml bench-train --model mypkg.models:build --data train.npz --epochs 2 --full-suite --repeats 3 -o bench/",
    ),
    cost.cost: (
        "nimbleml cost --serve-report serve.json --cloud aws,gcp,azure --rps 2000 --spot",
        "nimbleml cost --report bench/report.json --train-report runs/x --sla-p99-ms 10 --json cost.json",
    ),
    profile.profile: (
        "nimbleml profile model.nimble --data val.npz",
        "nimbleml profile model.onnx --data val.npz --batch-size 1,32 -o prof/",
        "nimbleml profile mypkg.models:build --train --data train.npz --batch-size 64 -o prof/",
    ),
    report.demo: ("nimbleml demo", "nimbleml demo --out /tmp/nimble-demo --quick"),
    sign.keygen: ("nimbleml keygen team.pem",),
    sign.sign: ("nimbleml sign model.nimble --key team.pem",),
    sign.verify: ("nimbleml verify model.nimble --key team.pub.pem",),
}
for verb, lines in EXAMPLES.items():
    app.command(**examples(*lines))(verb)


def main() -> None:
    app()


__all__ = ["app", "main"]
