"""The model stages: train the teacher, distil a shrunk student, optimize it within an
accuracy budget, sign the package and verify the signature on load."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .story import Context, Stage, Table, ms, timed


def train_teacher(ctx: Context) -> tuple[Any, Stage]:
    """``nimbleml.train`` on the digits as a torch Dataset, so the DataLoader is tuned by
    measuring; precision "auto", checkpoints every epoch, curves."""
    import torch

    from ..train import train
    from ..train.loader_settings import tune_loader
    from .data import new_mlp

    Xtr, Xte, ytr, yte = ctx.data
    s = ctx.settings
    stage = Stage("train", "1. Train a teacher",
                  f"A {Xtr.shape[1]}→{s.teacher_hidden}→{s.teacher_hidden}→10 MLP, "
                  f"nimbleml.train on {len(Xtr):,} digits rows, validated on {len(Xte):,}.")  # fmt: skip
    with timed(stage):
        out = ctx.folder("train")
        data = torch.utils.data.TensorDataset(torch.from_numpy(Xtr), torch.from_numpy(ytr))
        model = new_mlp(Xtr.shape[1], 10, s.teacher_hidden)
        # measured here within the demo's budget (train's own is 15 s); train(dataloader=
        # "auto") then finds the decision in the cache (DIR/tmp/cache) and uses it
        decision = tune_loader(model, data, 64, precision="auto", budget_s=s.loader_budget_s)
        result = train(model, data, (Xte, yte),
                       epochs=s.epochs, batch_size=64, lr=2e-3, scheduler="cosine",
                       precision="auto", dataloader="auto", checkpoint_dir=out, keep_last=2,
                       seed=0)  # fmt: skip
        result.report.save(out)
        _describe_training(ctx, stage, result, out, decision)
    ctx.echo(f"train: teacher {stage.figures[0][1]} in {stage.seconds:.1f} s")
    return result.model.eval(), stage


def _describe_training(ctx: Context, stage: Stage, result: Any, out: Path, loader: Any) -> None:
    report = result.report
    best = max((r for r in result.history if "val_metric" in r), key=lambda r: r["val_metric"])
    stage.figure(
        "validation accuracy (best epoch)", f"{best['val_metric']:.4f} (epoch {best['epoch']})"
    )
    stage.figure("precision", f"{report.precision}: {report.precision_reason}")
    stage.figure("DataLoader", f"{loader.summary}: {loader.reason}")
    stage.texts.append(("the DataLoader settings measured (real training steps)", loader.table()))
    (out / "loader.txt").write_text(loader.table() + "\n")
    last = result.history[-1]
    stage.figure("training speed (last epoch)", f"{last['samples_per_s']:,.0f} samples/s")
    stage.texts.append(("the training report", report.table()))
    ctx.image(stage, out / "curves.png", "loss and validation accuracy per epoch")
    for path in [*sorted(out.glob("epoch-*.pt")), out / "best.pt"]:
        ctx.link(stage, path, "checkpoint (model, optimizer, scheduler, every RNG state)")
    ctx.link(stage, out / "history.jsonl", "history, one line per epoch")
    ctx.link(
        stage, out / "report.json", "the report as JSON (precision and why, step times, machine)"
    )
    ctx.link(stage, out / "report.txt", "the report as text")
    ctx.link(stage, out / "loader.txt", "the DataLoader settings measured")


def distill_student(ctx: Context, teacher: Any) -> tuple[Any, Stage]:
    """A student shrunk from the teacher's weights, distilled, and the same student trained
    without the teacher on the same budget beside it."""
    from ..distill import distill, students

    Xtr, Xte, ytr, yte = ctx.data
    stage = Stage("distill", "2. Distil a small student",
                  "students.shrink keeps the teacher's strongest neurons (an eighth of the width, "
                  "half the depth); nimbleml.distill trains it on the teacher's softened outputs "
                  "(T² applied), and the same student is trained without the teacher beside it.")  # fmt: skip
    with timed(stage):
        student = students.shrink(teacher, width=0.125, depth=0.5)
        res = distill(teacher, student, (Xtr, ytr), (Xte, yte), temperature=4.0, alpha=0.7,
                      epochs=ctx.settings.distill_epochs, lr=3e-3, batch_size=64,
                      precision="fp32", seed=0, compare_models=False,
                      **_classic(distill))  # fmt: skip
    # the side-by-side timing runs once, in optimize, with the package among the rows
    stage.figure("teacher's outputs", res.cache)
    ctx.echo(f"distill: student trained in {stage.seconds:.1f} s ({res.cache})")
    return res, stage


def _classic(distill: Any) -> dict[str, Any]:
    """Hinton's distillation on the batches as they are, the teacher's outputs computed once:
    where ``distill`` offers augmented views or feature matching, they are turned off (with
    views the teacher runs on every step: 22 s instead of 4 s for the quick demo here)."""
    import inspect

    accepted = inspect.signature(distill).parameters
    return {name: None for name in ("views", "features") if name in accepted}


def distill_rows(ctx: Context, stage: Stage, res: Any) -> None:
    """The report's rows side by side (after optimize added the package's row)."""
    out = ctx.folder("distill")
    report = res.report
    report.save(out)
    rows = [[r.name, "-" if r.metric is None else f"{r.metric:.4f}", ms(r.p50_ms.get(1)),
             ms(r.p50_ms.get(32)), f"{r.size_mb:.3f}", f"{r.parameters:,}"]
            for r in report.rows]  # fmt: skip
    stage.tables.append(Table("teacher, student alone, distilled student and its package, timed in one run",
                              ["model", report.metric, "p50 batch 1", "p50 batch 32", "size MB",
                               "parameters"], rows))  # fmt: skip
    if report.verdict:
        stage.figure("verdict", report.verdict)
    stage.notes += list(report.notes)
    ctx.link(stage, out / "distill.json", "the distillation report as JSON")
    ctx.link(stage, out / "distill.txt", "the distillation report as text")


def optimize_student(ctx: Context, res: Any) -> tuple[Path, Stage]:
    """``nimbleml.optimize`` on the distilled student: every candidate verified, scored and
    timed here, the fastest within the budget kept."""
    s = ctx.settings
    stage = Stage("optimize", "3. Optimize within an accuracy budget",
                  f"nimbleml.optimize on the distilled student: at most 0.01 accuracy lost, "
                  f"decided at batch sizes 1 and 32, {s.optimize_budget_s:.0f} s of search.")  # fmt: skip
    with timed(stage):
        out = ctx.folder("optimize")
        found = res.optimize(max_drop=0.01, batch_sizes=[1, 32],
                             time_budget_s=s.optimize_budget_s)  # fmt: skip
        written = found.report(out)
        path = found.best.save(out / "student.nimble")
    v = found.best.manifest.get("validation", {})
    stage.figure("chosen", found.best_name)
    stage.figure("speed-up over the student in ONNX fp32 / torch", f"{found.speedup:.2f}x")
    if "baseline" in v and "package" in v:
        stage.figure("accuracy, original → package", f"{v['baseline']:.4f} → {v['package']:.4f}")
    runtime = found.best.manifest.get("runtime", {})
    if runtime.get("why"):
        stage.figure("runtime", f"{runtime.get('engine')}: {runtime['why']}")
    stage.figure("candidates tried", f"{len(found.candidates)} in {found.seconds:.1f} s")
    stage.texts.append(("every candidate (status, metric, drop, p50 at 1 and 32, size, why)",
                        found.table()))  # fmt: skip
    ctx.image(stage, out / "pareto.png", "the candidates: accuracy drop, latency and size")
    for p in written:
        ctx.link(stage, p, {"optimization.json": "every candidate as JSON",
                            "optimization.txt": "the candidate table",
                            "pareto.png": "the Pareto chart"}.get(p.name, p.name))  # fmt: skip
    ctx.link(stage, path / "manifest.json", "the package's manifest (recipe, proof, timings)")
    ctx.echo(f"optimize: {found.best_name}, {found.speedup:.2f}x, {stage.seconds:.1f} s")
    return path, stage


def sign_and_verify(ctx: Context, path: Path) -> Stage:
    """Sign the package with a new Ed25519 key, load it checking the signature, and show that
    an altered copy is refused."""
    from ..errors import PackageError
    from ..package import load
    from ..signing import generate_key, sign_package

    stage = Stage("sign", "4. Sign the package and verify it on load",
                  "A new Ed25519 key signs the manifest (which lists every file's sha256); "
                  "loading with the public key checks both before any model file is opened.")  # fmt: skip
    with timed(stage):
        keys = ctx.folder("keys")
        private, public, kid = generate_key(keys / "demo.pem")
        record = sign_package(path, private)
        load(path, verify=public)
        stage.figure("signed by", kid)
        stage.figure("load(verify=public key)", "signature and checksums verified")
        altered = ctx.out / "tmp" / "altered.nimble"
        shutil.copytree(path, altered)
        manifest = altered / "manifest.json"
        manifest.write_text(manifest.read_text().replace('"schema"', '"schema" ', 1))
        try:
            load(altered, verify=public)
            stage.notes.append("an altered copy was NOT refused: a bug, please report it")
        except PackageError as exc:
            stage.figure("an altered copy (one space added to its manifest)", f"refused: {exc}")
        shutil.rmtree(altered)
    ctx.link(stage, path / "signature.json", "the signature")
    ctx.link(stage, public, "the public key that verifies it")
    stage.notes.append(
        f"the private key {ctx.rel(private)} is readable by its owner only; "
        "it is not linked here: in practice it stays with whoever signs"
    )
    ctx.echo(f"sign: {record['key_id'][:23]}… verified on load")
    return stage
