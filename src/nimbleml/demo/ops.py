"""The operations stages: the monitor's report from the serving run's store, a profile of the
package, cost from the capacity just measured, deployment files checked offline, and a batch
prediction over a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .story import Context, Stage, Table, timed


def monitor_stage(ctx: Context, store: Path) -> Stage:
    from ..monitor.report import write_report
    from ..monitor.store import checkpoint_sqlite

    stage = Stage("monitor", "6. Monitor: what the serving run recorded",
                  "nimbleml report on the server's own store: latency and throughput, accuracy "
                  "against the ground truth sent back, the process's CPU and memory.")  # fmt: skip
    with timed(stage):
        out = ctx.folder("monitor")
        written = write_report(f"sqlite:///{store}", out)
        # its read-only connection leaves empty -wal and -shm files beside the store: a
        # read-write connection's close removes them
        checkpoint_sqlite(f"sqlite:///{store}")
    insights = (out / "insights.txt").read_text().strip()
    for line in insights.splitlines():
        if line.startswith(("accuracy", "requests", "latency")):
            stage.figure(line.split(" ", 1)[0], line.split(" ", 1)[1] if " " in line else "")
    stage.texts.append(("insights.txt", insights))
    captions = {"latency_throughput.png": "latency percentiles and throughput per window",
                "accuracy.png": "accuracy against ground truth per window",
                "resources.png": "the server process's CPU and memory"}  # fmt: skip
    for path in written:
        if path.suffix == ".png":
            ctx.image(stage, path, captions.get(path.name, path.stem))
        ctx.link(stage, path, path.name)
    ctx.echo(f"monitor: {len(written)} files from the store")
    return stage


def profile_stage(ctx: Context, package: Path) -> Stage:
    from ..profile import profile

    _, Xte, _, _ = ctx.data
    stage = Stage("profile", "7. Profile: where the time goes",
                  "nimbleml.profile runs the package under ONNX Runtime's own profiler at batch "
                  "1 and 32 and reads the trace into a table and a bottleneck summary.")  # fmt: skip
    with timed(stage):
        out = ctx.folder("profile")
        report = profile(str(package), Xte, batch_sizes=(1, 32), output=out,
                         time_budget_s=ctx.settings.profile_budget_s)  # fmt: skip
    for b in report.batches:
        stage.figure(f"batch {b.batch_size}", f"{b.samples_per_s:,.0f} samples/s")
    for k, line in enumerate(report.summary, 1):
        stage.figure(f"bottleneck {k}" if len(report.summary) > 1 else "bottleneck", line)
    stage.texts.append(("profile.txt", report.table()))
    ctx.image(stage, out / "profile.png", "time per op type at each batch size")
    for path in sorted(out.iterdir()):
        ctx.link(stage, path, path.name)
    ctx.echo(f"profile: {report.summary[0] if report.summary else 'done'}")
    return stage


def cost_stage(ctx: Context, report: dict[str, Any]) -> Stage:
    from ..cost import estimate_cost

    stage = Stage("cost", "8. Cost per 1M predictions",
                  "nimbleml.estimate_cost from the capacity the burst measured (and the "
                  "teacher's training time): every row says whether it is measured or an "
                  "estimate, and on what assumption.")  # fmt: skip
    with timed(stage):
        out = ctx.folder("cost")
        (out / "serve-report.json").write_text(json.dumps(report, indent=2) + "\n")
        est = estimate_cost(serve_report=report, train_report=ctx.out / "train" / "report.json",
                            clouds="aws,gcp,azure", spot=True, rps=1000)  # fmt: skip
        est.to_json(out / "cost.json")
        (out / "cost.txt").write_text(est.table() + "\n")
    model = report["models"][0]
    stage.figure("capacity measured here", f"{model['capacity_rps']:,.0f} req/s at p99 "
                                           f"{model['p99_ms']:.1f} ms (SLA {report['target_p99_ms']:g} ms)")  # fmt: skip
    rows = sorted(est.serving, key=lambda r: r.usd_per_million)[:6]
    if rows:
        best = rows[0]
        stage.figure("cheapest per 1M predictions",
                     f"${best.usd_per_million:.4f} on {best.instance.name} ({best.basis}: {best.assumption})")  # fmt: skip
        stage.cards.append((f"${best.usd_per_million:.4f}", f"per 1M predictions ({best.basis})"))
        stage.tables.append(Table("serving, cheapest first (the full table: cost.txt)",
                                  ["instance", "cloud", "vCPU", "$/h", "req/s", "$/1M",
                                   "basis", "assumption"],
                                  [[r.instance.name, r.instance.cloud, str(r.instance.vcpus),
                                    f"{r.instance.on_demand:.3f}", f"{r.capacity_rps:,.0f}",
                                    f"{r.usd_per_million:.4f}", r.basis, r.assumption]
                                   for r in rows]))  # fmt: skip
    if est.training:
        t = min(est.training, key=lambda r: r.usd_per_run)
        stage.figure("training the teacher, cheapest", f"${t.usd_per_run:.5f} a run on "
                                                       f"{t.instance.name} ({t.basis})")  # fmt: skip
    problem = est.problem()
    if problem:
        stage.notes.append(problem)
    stage.notes.append("the capacity is the closed-loop rate of one short burst with the client "
                       "on the same 2 cores, an understatement of a machine serving alone; "
                       "prices are the built-in catalog's, dated (see cost.txt)")  # fmt: skip
    for name, what in (("cost.txt", "the estimate as text"), ("cost.json", "every row as JSON"),
                       ("serve-report.json", "the serve report it started from")):  # fmt: skip
        ctx.link(stage, out / name, what)
    ctx.echo("cost: " + (stage.figures[1][1] if len(stage.figures) > 1 else "no row"))
    return stage


def batch_stage(ctx: Context, package: Path) -> Stage:
    from ..batch import predict_file

    _, Xte, _, _ = ctx.data
    rows = ctx.settings.batch_rows
    stage = Stage("batch", "10. Batch prediction over a file",
                  f"nimbleml.predict_file over a Parquet file of {rows:,} rows, in chunks, "
                  "resumable, each row's outputs written with its id.")  # fmt: skip
    with timed(stage):
        out = ctx.folder("batch")
        source = out / "rows.parquet"
        _write_rows(source, np.resize(Xte, (rows, Xte.shape[1])))
        result = predict_file(str(package), source, out / "predictions.parquet",
                              batch_size=1024, chunk_rows=65536)  # fmt: skip
    chunks = f"{result.chunks} chunk{'s' if result.chunks != 1 else ''}"
    stage.figure("rows", f"{result.rows:,} in {chunks} of at most 65,536")
    stage.cards.append((f"{result.rows_per_second:,.0f}", "rows/s predicted from a file"))
    stage.figure("speed", f"{result.rows_per_second:,.0f} rows/s ({result.seconds:.2f} s, "
                          "reading and writing included)")  # fmt: skip
    ctx.link(stage, source, f"the input ({source.stat().st_size / 1e6:.1f} MB of Parquet)")
    ctx.link(stage, result.out, "the predictions (Parquet: id and outputs)")
    ctx.echo(f"batch: {result.rows:,} rows at {result.rows_per_second:,.0f} rows/s")
    return stage


def _write_rows(path: Path, X: np.ndarray) -> None:
    """The rows as a Parquet file, one float column per feature."""
    from .._deps import require

    pa = require("pyarrow", "the demo's batch stage")
    pq = require("pyarrow.parquet", "the demo's batch stage")
    table = pa.table({f"x{i}": X[:, i].astype(np.float32) for i in range(X.shape[1])})
    pq.write_table(table, path)
