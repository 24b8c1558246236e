"""The distill verb: a student trained to match a teacher, beside the same student trained
alone, reported side by side, and (with -o) optimized into a verified package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from ._common import _guard, check_writable

CACHE = {"auto": "auto", "on": True, "off": False}


def distill(
    teacher: str = typer.Option(
        ...,
        help="a .nimble package, a TorchScript / .pt2 file, or module:function returning "
        "the trained teacher",
    ),
    student: str = typer.Option(
        "shrink",
        help="module:function returning the student, or 'shrink': the teacher made "
        "--width wide and --depth deep (nimbleml.students.shrink)",
    ),
    width: float = typer.Option(0.5, help="shrink: share of the hidden units kept"),
    depth: float = typer.Option(0.5, help="shrink: share of the layers kept"),
    data: str = typer.Option(
        ..., help="training data: .npz (X, y), .csv with --target, an image folder, module:function"
    ),
    val: str = typer.Option(..., help="validation data, the same kinds as --data"),
    target: str | None = typer.Option(None, help="the label column of .csv data"),
    temperature: float = typer.Option(2.0, help="softmax temperature T of the soft term"),
    alpha: float = typer.Option(0.5, help="share of the soft term (T^2-scaled KL) in the loss"),
    cache_teacher: str = typer.Option(
        "auto", help="auto (cached unless the data has random transforms), on, off"
    ),
    epochs: int = typer.Option(10, help="passes over the data"),
    batch_size: int = typer.Option(64, help="samples per optimizer step"),
    lr: float = typer.Option(1e-3, help="learning rate"),
    seed: int = typer.Option(0, help="seed of the data order"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N, auto"),
    baseline: bool = typer.Option(
        True, "--baseline/--no-baseline", help="also train the student without the teacher"
    ),
    max_drop: float = typer.Option(0.01, help="-o: largest allowed metric drop of the package"),
    time_budget: float = typer.Option(180.0, help="-o: seconds the package search may take"),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="optimize the distilled student into this .nimble package"
    ),
    report: Path | None = typer.Option(None, "--report", help="write distill.json/.txt here"),
) -> None:
    """Distill a teacher into a small student; report both students beside the teacher."""

    def go() -> None:
        if cache_teacher not in CACHE:
            raise ConfigError(f"--cache-teacher must be auto, on or off, got {cache_teacher!r}")
        if output is not None:
            check_writable(output, folder=True)
        if report is not None:
            check_writable(report, folder=True)
        import nimbleml

        from ..train import sources

        train_data = sources.load(data, target, None, "--data")
        val_data = sources.load(val, target, None, "--val")
        the_teacher = _teacher(teacher, sources.as_arrays(val_data)[0])
        the_student = _student(student, the_teacher, width, depth)
        res = nimbleml.distill(the_teacher, the_student, train_data, val_data,
                               temperature=temperature, alpha=alpha,
                               cache_teacher=CACHE[cache_teacher], baseline=baseline,
                               epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                               device=device, precision="fp32")  # fmt: skip
        if output is not None:
            found = res.optimize(max_drop=max_drop, time_budget_s=time_budget)
            found.best.save(output)
        typer.echo(res.report.table())
        if output is not None:
            typer.echo(f"package: {output}")
        if report is not None:
            res.report.save(report)
            typer.echo(f"report: {report}/distill.json, distill.txt")

    _guard(go)


def _teacher(spec: str, example: Any) -> Any:
    from ..models import load_model
    from ..train import sources

    path = Path(spec)
    if path.is_dir():
        return str(path)  # a .nimble package: run by ONNX Runtime
    if sources.is_reference(spec) and not path.exists():
        return sources.build_model(spec)
    first = {k: v[:8] for k, v in example.items()} if isinstance(example, dict) else example[:8]
    model = load_model(path, first)
    module = getattr(model, "module", None)
    if module is None:
        raise ConfigError(
            f"--teacher {spec}: a {model.framework} model; give a .nimble package, a "
            "TorchScript / .pt2 file or module:function"
        )
    return module


def _student(spec: str, teacher: Any, width: float, depth: float) -> Any:
    import torch

    from ..search.students import shrink
    from ..train import sources

    if spec != "shrink":
        return sources.build_model(spec)
    if not isinstance(teacher, torch.nn.Module) or isinstance(teacher, torch.jit.ScriptModule):
        raise ConfigError(
            "--student shrink needs the teacher as a torch module (module:function); for a "
            "package or TorchScript teacher give --student module:function"
        )
    return shrink(teacher, width=width, depth=depth)
