"""``nimbleml demo --out DIR``: the stages in order, the page, the summary. Everything the run
writes is under DIR (temporary files in DIR/tmp, removed at the end), and every process it
starts is stopped before it returns, on errors and Ctrl-C too."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._procs import stop
from .story import Context, Settings, Stage
from .workspace import inside, prepare


def run_demo(out: str | Path, quick: bool = False, force: bool = False,
             echo: Callable[[str], None] = print) -> Path:  # fmt: skip
    """Run every stage into ``out`` and return the page's path. ``quick``: the same stages on
    smaller settings (about a minute on 2 cores). An earlier demo's folder needs ``force``."""
    from .._version import __version__
    from ..bench.machine import machine_info

    out = Path(out)
    prepare(out, force)
    (out / "demo.json").write_text(json.dumps({"status": "running"}) + "\n")
    started = time.perf_counter()
    settings = Settings.of(quick)
    with inside(out):
        from .data import digits

        ctx = Context(out, settings, digits(), echo)
        echo(f"nimbleml demo{' --quick' if quick else ''}: writing {out}")
        try:
            stages = _stages(ctx)
        finally:
            _stop_leftovers(echo)
    seconds = time.perf_counter() - started
    info = machine_info()
    about = {"mode": "quick settings (--quick)" if quick else "full settings",
             "seconds": seconds, "version": __version__,
             "machine": f"{info.cpu}, {info.logical_cores} logical cores"}  # fmt: skip
    cards = [c for s in stages for c in s.cards]
    from . import page

    path = page.write(out, stages, cards, about)
    (out / "demo.json").write_text(json.dumps(
        {"status": "done", "about": about, "settings": settings.__dict__,
         "stages": [s.to_dict() for s in stages]}, indent=2, default=str) + "\n")  # fmt: skip
    _summary(echo, stages, seconds, path)
    return path


def _stages(ctx: Context) -> list[Stage]:
    from . import deploying, ops, serving, stages

    teacher, train = stages.train_teacher(ctx)
    res, distill = stages.distill_student(ctx, teacher)
    package, optimize = stages.optimize_student(ctx, res)
    stages.distill_rows(ctx, distill, res)
    _distill_cards(train, distill, res)
    sign = stages.sign_and_verify(ctx, package)
    public = ctx.out / "keys" / "demo.pub.pem"
    figures, serve = serving.serve_stage(ctx, package, public)
    serve.cards += [(f"{figures['on']['rps']:,.0f} req/s", "served over HTTP, batching on"),
                    (f"{figures['on']['p99_ms']:.1f} ms",
                     f"p99 latency of the burst (n={figures['on']['n']:,})")]  # fmt: skip
    monitor = ops.monitor_stage(ctx, figures["monitor_store"])
    profile = ops.profile_stage(ctx, package)
    report = serving.capacity(figures)
    cost = ops.cost_stage(ctx, report)
    deploy = deploying.deploy_stage(ctx, package, report)
    batch = ops.batch_stage(ctx, package)
    return [train, distill, optimize, sign, serve, monitor, profile, cost, deploy, batch]


def _stop_leftovers(echo: Callable[[str], None]) -> None:
    """Every stage stops what it starts; a process of ours still running here (a helper a
    library left behind) is stopped too, and said."""
    import psutil

    left = psutil.Process().children(recursive=True)
    if not left:
        return
    echo("stopping what was left running: " + ", ".join(str(p.pid) for p in left))
    stop(left, grace_s=10)


def _distill_cards(train: Stage, distill: Stage, res: Any) -> None:
    rows = res.report.rows
    teacher, last = rows[0], rows[-1]
    if teacher.metric is not None:
        train.cards.append((f"{teacher.metric:.3f}", "teacher's accuracy"))
    name = last.name.replace(" (package)", " package")  # "student package"
    if last.metric is not None:
        distill.cards.append((f"{last.metric:.3f}", f"accuracy of the {name}"))
    if teacher.p50_ms.get(1) and last.p50_ms.get(1):
        distill.cards.append((f"{teacher.p50_ms[1] / last.p50_ms[1]:.1f}x",
                              f"the {name}'s speed over the teacher's (p50, batch 1)"))  # fmt: skip
    if teacher.size_mb and last.size_mb:
        distill.cards.append((f"{teacher.size_mb / last.size_mb:.0f}x",
                              f"the {name} smaller than the teacher"))  # fmt: skip


def _summary(echo: Callable[[str], None], stages: list[Stage], seconds: float, page: Path) -> None:
    echo("")
    for value, what in (c for s in stages for c in s.cards):
        echo(f"  {value:>14}  {what}")
    notes = [n for s in stages for n in s.notes if "skipped" in n]
    for note in notes:
        echo(f"  note: {note}")
    echo(f"demo done in {seconds:.0f} s; open {page.resolve()}")
