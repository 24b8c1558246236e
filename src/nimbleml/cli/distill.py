"""The distill verb: a student trained to match a teacher, beside the same student trained
alone, reported side by side, and (with -o) optimized into a verified package.

A YAML file (``--config``) holds the same settings; a flag given wins; an unknown key is an
error that lists the known ones:

    models: {teacher: mypkg.models:trained, student: shrink, width: 0.25, depth: 0.5}
    data: {train: train.npz, val: val.npz, unlabeled: more.npz}
    distill: {temperature: 4, alpha: 0.7, views: none, cache_teacher: auto, baseline: true,
              keep: best}
    training: {epochs: 30, batch_size: 64, lr: 0.003, seed: 0, device: cpu}
    output: {package: student.nimble, max_drop: 0.01, time_budget: 180, report: distill/}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from ._common import _guard, check_writable

CACHE: dict[str, Any] = {"auto": "auto", "on": True, "off": False}


DEFAULTS: dict[str, Any] = {
    "teacher": None, "student": "shrink", "width": 0.5, "depth": 0.5, "train": None,
    "val": None, "target": None, "unlabeled": None, "temperature": None, "alpha": None,
    "views": "none", "cache_teacher": "auto", "baseline": True, "keep": "best", "epochs": 10,
    "batch_size": 64, "lr": 1e-3, "seed": 0, "device": "cpu",
    "package": None, "max_drop": 0.01, "time_budget": 180.0, "report": None,
    "trust_pickle": False,
}  # fmt: skip
# the YAML's sections and their keys (flags of the same names win over them)
SECTIONS = {
    "models": ("teacher", "student", "width", "depth"),
    "data": ("train", "val", "target", "unlabeled"),
    "distill": ("temperature", "alpha", "views", "cache_teacher", "baseline", "keep"),
    "training": ("epochs", "batch_size", "lr", "seed", "device"),
    "output": ("package", "max_drop", "time_budget", "report"),
}


def distill(
    config: Path | None = typer.Option(
        None, "--config", help="YAML with models:, data:, distill:, training:, output:; flags win"
    ),
    teacher: str | None = typer.Option(
        None,
        help="a .nimble package, a TorchScript / .pt2 file, or module:function returning "
        "the trained teacher",
    ),
    student: str | None = typer.Option(
        None,
        help="module:function returning the student, or shrink: the teacher made --width "
        "wide and --depth deep (nimbleml.students.shrink) [shrink]",
    ),
    width: float | None = typer.Option(None, help="shrink: share of the hidden units kept [0.5]"),
    depth: float | None = typer.Option(None, help="shrink: share of the layers kept [0.5]"),
    data: str | None = typer.Option(
        None,
        help="training data: .npz (X, y), .csv with --target, an image folder, module:function",
    ),
    val: str | None = typer.Option(None, help="validation data, the same kinds as --data"),
    target: str | None = typer.Option(None, help="the label column of .csv data"),
    unlabeled: str | None = typer.Option(
        None, help="rows without labels (.npz X, .csv, .npy) the teacher labels"
    ),
    temperature: float | None = typer.Option(
        None, help="softmax temperature T [chosen by a short search]"
    ),
    alpha: float | None = typer.Option(
        None, help="share of the T^2-scaled KL term [chosen by a short search]"
    ),
    views: str | None = typer.Option(
        None,
        help="what teacher and student both see: auto (mixup; images also crops and "
        "flips), mixup, mixup+crop, mixup+crop+flip, none [none]",
    ),
    keep: str | None = typer.Option(
        None, help="best (the better of distilled and alone on --val) or distilled [best]"
    ),
    cache_teacher: str | None = typer.Option(
        None, help="auto (cached unless the data has random transforms), on, off [auto]"
    ),
    epochs: int | None = typer.Option(None, help="passes over the data [10]"),
    batch_size: int | None = typer.Option(None, help="samples per optimizer step [64]"),
    lr: float | None = typer.Option(None, help="learning rate [0.001]"),
    seed: int | None = typer.Option(None, help="seed of the data order [0]"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:N, auto [cpu]"),
    baseline: bool | None = typer.Option(
        None, "--baseline/--no-baseline", help="also train the student without the teacher [yes]"
    ),
    max_drop: float | None = typer.Option(None, help="-o: largest allowed metric drop [0.01]"),
    time_budget: float | None = typer.Option(None, help="-o: seconds the search may take [180]"),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="optimize the distilled student into this .nimble package"
    ),
    report: Path | None = typer.Option(None, "--report", help="write distill.json/.txt here"),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="allow loading a pickled --teacher file (torch.save of a whole module: it runs "
        "code when loaded)",
    ),
) -> None:
    """Distill a teacher into a small student; report both students beside the teacher."""
    given = {
        "teacher": teacher, "student": student, "width": width, "depth": depth, "train": data,
        "val": val, "target": target, "unlabeled": unlabeled, "temperature": temperature,
        "alpha": alpha, "views": views, "keep": keep,
        "cache_teacher": cache_teacher, "baseline": baseline, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "seed": seed, "device": device,
        "package": output, "max_drop": max_drop, "time_budget": time_budget, "report": report,
        "trust_pickle": trust_pickle or None,
    }  # fmt: skip
    _guard(lambda: run(settings(given, config)))


def settings(given: dict[str, Any], config: Path | None) -> dict[str, Any]:
    """Defaults, then the YAML file, then the flags given."""
    spec = dict(DEFAULTS)
    if config is not None:
        from .._yaml import read_sections

        spec.update(read_sections(config, SECTIONS, lambda _k, v, _w: v))
    spec.update({k: v for k, v in given.items() if v is not None})
    for key, flag in (("teacher", "--teacher"), ("train", "--data"), ("val", "--val")):
        if not spec[key]:
            raise ConfigError(f"no {key}: give {flag} (or {key}: in the --config file)")
    if str(spec["cache_teacher"]) not in CACHE and spec["cache_teacher"] not in (True, False):
        raise ConfigError(f"--cache-teacher must be auto, on or off, got {spec['cache_teacher']!r}")
    return spec


def run(spec: dict[str, Any]) -> None:
    import nimbleml

    from ..inputs import refuse_missing_pair
    from ..train import sources

    output, report = spec["package"], spec["report"]
    if output is not None:
        check_writable(output, folder=True)
    if report is not None:
        check_writable(report, folder=True)
    cache = spec["cache_teacher"]
    cache = cache if isinstance(cache, bool) else CACHE[str(cache)]
    train_data = sources.load(str(spec["train"]), spec["target"], None, "--data")
    val_data = sources.load(str(spec["val"]), spec["target"], None, "--val")
    refuse_missing_pair(train_data, f"--data {spec['train']}")
    refuse_missing_pair(val_data, f"--val {spec['val']}")
    extra = _unlabeled(spec["unlabeled"])
    the_teacher = _teacher(str(spec["teacher"]), sources.as_arrays(val_data)[0],
                           bool(spec["trust_pickle"]))  # fmt: skip
    the_student = _student(str(spec["student"]), the_teacher, spec["width"], spec["depth"])
    res = nimbleml.distill(the_teacher, the_student, train_data, val_data,
                           temperature=spec["temperature"], alpha=spec["alpha"],
                           views=spec["views"], keep=spec["keep"], unlabeled=extra,
                           cache_teacher=cache, baseline=spec["baseline"],
                           epochs=spec["epochs"], batch_size=spec["batch_size"], lr=spec["lr"],
                           seed=spec["seed"], device=spec["device"], precision="fp32")  # fmt: skip
    if output is not None:
        found = res.optimize(max_drop=spec["max_drop"], time_budget_s=spec["time_budget"])
        found.best.save(output)
    typer.echo(res.report.table())
    if output is not None:
        typer.echo(f"package: {output}")
    if report is not None:
        res.report.save(report)
        typer.echo(f"report: {report}/distill.json, distill.txt")


def _unlabeled(path: Any) -> Any:
    """The rows of --unlabeled FILE (a y in the file is ignored: the teacher labels them)."""
    if path is None:
        return None
    from ..errors import DataError
    from ..inputs import load_data

    if not Path(str(path)).exists():
        raise DataError(f"--unlabeled {path}: no such file (.npz with X, .csv, .npy)")
    X, _ = load_data(str(path), None)
    return X


def _teacher(spec: str, example: Any, trust_pickle: bool = False) -> Any:
    from ..models import load_model
    from ..train import sources

    path = Path(spec)
    if path.is_dir():
        return str(path)  # a .nimble package: run by ONNX Runtime
    if sources.is_reference(spec) and not path.exists():
        return sources.build_model(spec)
    first = {k: v[:8] for k, v in example.items()} if isinstance(example, dict) else example[:8]
    model = load_model(path, first, trust_pickle=trust_pickle)
    module = getattr(model, "module", None)
    if module is None:
        raise ConfigError(
            f"--teacher {spec}: a {model.framework} model; give a .nimble package, a "
            "TorchScript / .pt2 file or module:function"
        )
    return module


def _student(spec: str, teacher: Any, width: float, depth: float) -> Any:
    import torch

    from ..distill.students import shrink
    from ..train import sources

    if spec != "shrink":
        return sources.build_model(spec)
    if not isinstance(teacher, torch.nn.Module) or isinstance(teacher, torch.jit.ScriptModule):
        raise ConfigError(
            "--student shrink needs the teacher as a torch module (module:function); for a "
            "package or TorchScript teacher give --student module:function"
        )
    return shrink(teacher, width=width, depth=depth)
