"""The train verb: a PyTorch model trained from the command line, on one process or several
(``--nproc N``, under torchrun), optionally ending with a verified package (``--optimize``).

A YAML file (``--config``) holds the same settings in the API's three parts (``model:``,
``data:``, ``training:``; read and checked by :func:`nimbleml.train.config.read_config`, whose
docstring shows one); a flag given wins over the file; an unknown key is an error that lists
the known ones. Flags and file values go through the same per-key check as the API's
TrainConfig (``nimbleml.train.config.check``). Two differences from the API: the command
line trains in fp32 unless ``--amp`` / ``--precision`` / ``training.precision`` says
otherwise, and the same command again resumes from ``--checkpoint-dir``'s last checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from ..train.config import SECTIONS, TRAINING, TrainConfig, check, read_config
from ._common import DEBUG, _guard, check_writable
from .cost import check_clouds

# the flag that sets a key, where its name differs from --key-with-dashes
FLAGS = {"factory": "--model", "train": "--data", "kwargs": "model.kwargs"}
CLI_PRECISION = "fp32"  # without --amp / --precision the command line trains in fp32


def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {k: None for k in (*SECTIONS["model"], *SECTIONS["data"])}
    out["kwargs"] = {}
    api = TrainConfig()  # the API's defaults
    out.update({name: getattr(api, name) for name in TRAINING if hasattr(api, name)})
    out.update(precision=CLI_PRECISION, nproc=1, log=[], resume=None)
    return out


def _batch_size(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1 or 'auto', got {text!r}")
    return value


def settings(given: dict[str, Any], config: Path | None) -> dict[str, Any]:
    """Flags given (not None) over the file's settings, over the defaults; all checked."""
    from_file = read_config(config) if config else {}
    spec = _defaults()
    for key in spec:
        if given.get(key) is not None:
            spec[key] = check(key, given[key], FLAGS.get(key, "--" + key.replace("_", "-")))
        elif key in from_file:
            spec[key] = from_file[key]
    if not spec["train"]:
        raise ConfigError("no training data: give --data FILE or 'data.train' in --config")
    if spec["resume"] is None:  # the same command again goes on from its last checkpoint
        spec["resume"] = bool(spec["checkpoint_dir"])
    TrainConfig(**options(spec))  # the values together (resume needs checkpoint_dir, ...)
    spec[PRECISION_REASON] = _precision_reason(given, from_file, config)
    return spec


PRECISION_REASON = "precision_reason"  # in the spec: why the precision, said in the report


def _precision_reason(given: dict[str, Any], from_file: dict[str, Any],
                      config: Path | None) -> str | None:  # fmt: skip
    """What decided a precision that is not 'auto' (auto's reason is the hardware's)."""
    if given.get("precision") is not None:
        return f"chosen explicitly (--precision {given['precision']})"
    if "precision" in from_file:
        return f"chosen explicitly (training.precision in {config})"
    return (
        "the command line's default; --amp trains in mixed precision where this hardware runs "
        "it natively"
    )


def options(spec: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's options in ``spec``."""
    return {k: spec[k] for k in TRAINING if k not in ("nproc", "log")}


def _precision(amp: bool, precision: str | None) -> str | None:
    if amp and precision not in (None, "auto"):
        raise ConfigError(
            f"--amp (precision auto) and --precision {precision} disagree: give one of them"
        )
    return "auto" if amp else precision


def given_args(ctx: typer.Context, leave_out: tuple[str, ...] = ("nproc",)) -> list[str]:
    """The options given on this command line, as arguments again (for each process)."""
    out: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        source = ctx.get_parameter_source(name)  # typer's click or click: compare by name
        if name in leave_out or getattr(source, "name", None) != "COMMANDLINE":
            continue
        value = ctx.params[name]
        opt = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            if value:
                out.append(opt)
            elif param.secondary_opts:
                out.append(param.secondary_opts[0])
        elif param.multiple:
            for v in value:
                out += [opt, str(v)]
        else:
            out += [opt, str(value)]
    return out


def train(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", help="YAML with model:, data:, training: sections; flags win"
    ),
    model: str | None = typer.Option(
        None, "--model", help="module:function (or file.py:function) returning a torch.nn.Module"
    ),
    arch: str | None = typer.Option(None, help="a torchvision architecture, e.g. resnet18"),
    num_classes: int | None = typer.Option(None, help="passed to --model / --arch"),
    data: str | None = typer.Option(
        None,
        help="training data: .npz (X, y), .csv with --target, an image folder, module:function",
    ),
    val: str | None = typer.Option(None, help="validation data, the same kinds as --data"),
    target: str | None = typer.Option(None, help="the label column of .csv data"),
    image_size: int | None = typer.Option(None, help="image folders: resize to N x N"),
    epochs: int | None = typer.Option(None, help="passes over the data [10]"),
    batch_size: str | None = typer.Option(
        None, help="samples per optimizer step, all processes together (or auto) [64]"
    ),
    grad_accum: int | None = typer.Option(None, help="micro-batches per optimizer step [1]"),
    lr: float | None = typer.Option(None, help="learning rate [0.001]"),
    optimizer: str | None = typer.Option(None, help="adamw, adam, sgd [adamw]"),
    weight_decay: float | None = typer.Option(None, help="weight decay [0]"),
    loss: str | None = typer.Option(
        None, help="cross_entropy, mse, l1, smooth_l1, bce_with_logits [by target dtype]"
    ),
    metric: str | None = typer.Option(None, help="validation metric [accuracy for classes]"),
    scheduler: str | None = typer.Option(None, help="cosine, plateau, onecycle, step"),
    warmup_steps: int | None = typer.Option(None, help="linear learning-rate warm-up steps [0]"),
    grad_clip: float | None = typer.Option(None, help="clip the gradient norm to this"),
    amp: bool = typer.Option(
        False, "--amp", help="mixed precision where this hardware runs it natively (auto)"
    ),
    precision: str | None = typer.Option(None, help="auto, fp32, fp16-mixed, bf16-mixed [fp32]"),
    checkpointing: bool = typer.Option(
        False, "--checkpointing", help="activation checkpointing: less memory, more compute"
    ),
    early_stopping: int | None = typer.Option(
        None, help="stop after this many epochs without a better validation score"
    ),
    checkpoint_dir: str | None = typer.Option(
        None, help="checkpoints, history.jsonl, report.json/.txt and curves.png go here"
    ),
    resume: bool | None = typer.Option(
        None,
        "--resume/--no-resume",
        help="go on from the last checkpoint in --checkpoint-dir [yes when there is one]",
    ),
    seed: int | None = typer.Option(None, help="seed of the weights and the data order [0]"),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N [auto]"),
    nproc: int | None = typer.Option(
        None, help="processes (data parallel, under torchrun; gloo on CPU, nccl on GPU) [1]"
    ),
    strategy: str | None = typer.Option(
        None, help="with --nproc: ddp (a whole model per process) or fsdp (sharded) [ddp]"
    ),
    fsdp_blocks: str | None = typer.Option(
        None, help="--strategy fsdp: the submodules to shard, a,b,... [the largest Sequential's]"
    ),
    max_restarts: int | None = typer.Option(
        None, help="with --nproc: restart every process this many times after one fails [0]"
    ),
    nnodes: int | None = typer.Option(None, help="machines, each running this command [1]"),
    node_rank: int | None = typer.Option(
        None, help="--nnodes: this machine's number, 0 on the one that writes checkpoints"
    ),
    rdzv_endpoint: str | None = typer.Option(
        None, help="--nnodes: HOST:PORT where the machines meet (HOST runs node 0)"
    ),
    log: list[str] | None = typer.Option(
        None, "--log", help="tensorboard[:DIR] or mlflow[:URI]; repeat for both"
    ),
    save_model: Path | None = typer.Option(
        None, help="write the trained model's state_dict here (torch.save)"
    ),
    optimize: bool = typer.Option(
        False, "--optimize", help="then search for the fastest verified package (-o)"
    ),
    max_drop: float = typer.Option(0.01, help="--optimize: largest allowed metric drop"),
    time_budget: float = typer.Option(180.0, help="--optimize: seconds the search may take"),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="--optimize: where to write the .nimble package"
    ),
    cloud: str | None = typer.Option(
        None, "--cloud", help="then print the cost of this run on these clouds (aws,gcp,azure)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
) -> None:
    """Train a PyTorch model: one process or many (--nproc), checkpoints, reports, trackers."""
    from ..train import launch

    def go() -> None:
        given = {
            "factory": model, "arch": arch, "num_classes": num_classes, "train": data,
            "val": val, "target": target, "image_size": image_size, "epochs": epochs,
            "batch_size": _batch_size(batch_size) if batch_size is not None else None,
            "grad_accum": grad_accum, "lr": lr, "optimizer": optimizer,
            "weight_decay": weight_decay, "loss": loss, "metric": metric,
            "scheduler": scheduler, "warmup_steps": warmup_steps, "grad_clip": grad_clip,
            "precision": _precision(amp, precision), "checkpointing": checkpointing or None,
            "early_stopping": early_stopping, "checkpoint_dir": checkpoint_dir,
            "resume": resume, "seed": seed, "device": device, "nproc": nproc,
            "log": list(log) if log else None, "strategy": strategy,
            "fsdp_blocks": _names(fsdp_blocks, "--fsdp-blocks"),
        }  # fmt: skip
        spec = settings(given, config)
        _check_outputs(spec, save_model, optimize, output, max_drop, time_budget)
        check_clouds(cloud)
        group = _group(spec, max_restarts, nnodes, node_rank, rdzv_endpoint)
        try:
            if group is not None:
                from .rank import ENTRY  # not at the top: each process runs rank.py as __main__

                _preflight(spec)
                code = launch.relaunch(ENTRY, given_args(ctx, LAUNCHER), group, debug=DEBUG["on"],
                                       progress=_progress_mode(quiet),
                                       resume=_how_to_go_on(spec))  # fmt: skip
                raise typer.Exit(code)
            from ._train_run import run

            run(spec, progress=_progress_mode(quiet), save_model=save_model,
                optimize=(max_drop, time_budget, output) if optimize else None, cloud=cloud)  # fmt: skip
        except KeyboardInterrupt:
            if spec["checkpoint_dir"] and spec["resume"]:
                raise  # the one line: interrupted; run the same command to resume
            typer.echo(f"interrupted; {_how_to_go_on(spec)}", err=True)
            raise typer.Exit(130) from None

    _guard(go)


# the flags of the launcher (torchrun), not of each process
LAUNCHER = ("nproc", "max_restarts", "nnodes", "node_rank", "rdzv_endpoint")


def _names(text: str | None, flag: str) -> list[str] | None:
    """'a,b' -> ['a', 'b'] (None when not given)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{flag} takes submodule names separated by commas, got {text!r}")
    return names


def _group(spec: dict[str, Any], max_restarts: int | None, nnodes: int | None,
           node_rank: int | None, endpoint: str | None) -> Any:  # fmt: skip
    """The processes torchrun is to start (launch.Group), None for one process here (or in
    a process torchrun started); the launcher's flags checked together first."""
    from ..train import launch

    if launch.inside_torchrun():
        return None
    nodes = 1 if nnodes is None else nnodes
    if nodes < 1:
        raise ConfigError(f"--nnodes must be >= 1, got {nodes}")
    if nodes == 1 and (node_rank is not None or endpoint):
        flag = "--node-rank" if node_rank is not None else "--rdzv-endpoint"
        raise ConfigError(f"{flag} is for a run on several machines: give --nnodes N (N >= 2) "
                          "on each, or leave it out")  # fmt: skip
    if nodes > 1 and not endpoint:
        raise ConfigError(f"--nnodes {nodes} needs --rdzv-endpoint HOST:PORT, where the machines "
                          "meet (the same on each; HOST runs node 0)")  # fmt: skip
    if node_rank is not None and not 0 <= node_rank < nodes:
        raise ConfigError(
            f"--node-rank must be 0 to {nodes - 1} (--nnodes {nodes}), got {node_rank}"
        )
    several = spec["nproc"] > 1 or nodes > 1
    restarts = max_restarts or 0
    if restarts < 0:
        raise ConfigError(f"--max-restarts must be >= 0, got {restarts}")
    if restarts and not several:
        raise ConfigError(
            f"--max-restarts {restarts} restarts the processes torchrun starts, and this run "
            "is one process: give --nproc N (N >= 2), or leave --max-restarts out"
        )
    if restarts and not spec["checkpoint_dir"]:
        raise ConfigError(
            f"--max-restarts {restarts} resumes the restarted processes from the last "
            "checkpoint: give --checkpoint-dir DIR"
        )
    if spec["strategy"] == "fsdp" and not several:
        raise ConfigError(
            "--strategy fsdp shards the model over several processes, and this run is one: "
            "give --nproc N (N >= 2), or leave --strategy out"
        )
    if not several:
        return None
    return launch.Group(spec["nproc"], restarts, nodes, node_rank, endpoint)


def _how_to_go_on(spec: dict[str, Any]) -> str:
    """After a stop: what running the same command again does."""
    if not spec["checkpoint_dir"]:
        return "nothing was saved to resume from (give --checkpoint-dir DIR to keep checkpoints)"
    if not spec["resume"]:
        return (f"run it again without --no-resume to resume from the last checkpoint in "
                f"{spec['checkpoint_dir']}")  # fmt: skip
    return f"running the same command resumes from the last checkpoint in {spec['checkpoint_dir']}"


def _check_outputs(spec: dict[str, Any], save_model: Path | None, optimize: bool,
                   output: Path | None, max_drop: float, time_budget: float) -> None:  # fmt: skip
    if optimize:
        if output is None:
            raise ConfigError("--optimize needs -o OUT.nimble: where the verified package goes")
        if not spec["val"]:
            raise ConfigError("--optimize needs --val DATA: the package is verified on it")
        if not max_drop >= 0:
            raise ConfigError(f"--max-drop must be >= 0, got {max_drop}")
        if not time_budget > 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {time_budget}")
        check_writable(output, folder=True)
    elif output is not None:
        raise ConfigError("-o names the package --optimize writes: add --optimize")
    if save_model is not None:
        check_writable(save_model)
    if spec["checkpoint_dir"]:
        check_writable(spec["checkpoint_dir"], folder=True)


def _preflight(spec: dict[str, Any]) -> None:
    """What can be checked before starting processes: the model and data can be found (the
    modules are found, not imported: importing torch here would cost each run seconds)."""
    from ..errors import DataError
    from ..train import sources

    if spec["arch"] and not spec["factory"]:
        sources.check_arch(spec["arch"])
    elif spec["factory"] and not spec["arch"]:
        sources.find(spec["factory"], "--model")
    else:
        sources.build_model(spec["factory"], spec["arch"])  # the error for both / neither
    for key, flag in (("train", "--data"), ("val", "--val")):
        path = spec[key]
        if path and sources.is_reference(path):
            sources.find(path, flag)
        elif path and not os.path.exists(path):
            raise DataError(f"data file not found: {path} ({flag} takes {sources.DATA_FORMATS})")


def _progress_mode(quiet: bool) -> str:
    """rich: a live bar on a terminal; lines: one line per epoch (logs, pipes); off."""
    from ..train.launch import PROGRESS

    if os.environ.get(PROGRESS):
        return os.environ[PROGRESS]  # decided by the parent process
    if quiet:
        return "off"
    return "rich" if sys.stderr.isatty() else "lines"
