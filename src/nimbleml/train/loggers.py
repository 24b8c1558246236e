"""Experiment tracking through the loggers people already run, as training callbacks:
TensorBoard event files (``tensorboard:DIR``) and MLflow (``mlflow`` or ``mlflow:URI``).

A logger is a callback ``logger(event, info)`` for the Trainer's ``callbacks=`` (it logs each
``epoch_end`` record, and TensorBoard also each ``step_end`` loss), plus ``start(params)``
before training and ``close(ok)`` after it. Both packages are optional extras
(``pip install 'nimbleml[train-logs]'``); each is imported only when its logger is made.
Under data parallelism only rank 0 makes loggers (``launch`` sees to that), so a run is one
run in the tracker, not one per process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .._deps import require
from ..errors import ConfigError

KINDS = ("tensorboard[:DIR]", "mlflow[:URI]")
TENSORBOARD_DIR = "runs"  # TensorBoard's own default folder
EXPERIMENT = "nimbleml"


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of an epoch record (booleans and the epoch itself left out)."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"
        and math.isfinite(float(v))
    }  # fmt: skip


class TensorBoardLogger:
    """Event files under ``log_dir`` (open them with ``tensorboard --logdir DIR``): each
    epoch's numbers as ``epoch/<name>`` at step = epoch, each optimizer step's running
    train loss as ``step/train_loss`` at the global step, the options as text."""

    def __init__(self, log_dir: str | Path = TENSORBOARD_DIR) -> None:
        require("tensorboard", "--log tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def start(self, params: dict[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self.writer.add_text("options", f"| option | value |\n|---|---|\n{rows}", 0)

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "step_end" and "loss" in info:
            self.writer.add_scalar("step/train_loss", float(info["loss"]), int(info["step"]))
        elif event == "epoch_end":
            for name, value in _scalars(info).items():
                self.writer.add_scalar(f"epoch/{name}", value, int(info["epoch"]))
            self.writer.flush()

    def close(self, ok: bool = True) -> None:
        self.writer.close()


class MLflowLogger:
    """One MLflow run in experiment ``nimbleml`` (or $MLFLOW_EXPERIMENT_NAME): the options as
    params, each epoch's numbers as metrics at step = epoch, the report files as artifacts.

    ``uri``: a tracking server (``http://host:5000``), a database (``sqlite:///mlflow.db``,
    needs the full ``mlflow`` package), or a folder (``mlruns``, a ``file:`` store). None: the
    URI in $MLFLOW_TRACKING_URI, else the folder ``mlruns`` here. MLflow 3 keeps its file
    store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE=true; a folder
    asked for here sets that for this process, since the folder is what was asked for."""

    def __init__(self, uri: str | None = None) -> None:
        require("mlflow", "--log mlflow")
        from mlflow.tracking import MlflowClient

        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
        if "://" not in uri and not uri.startswith("file:"):
            uri = Path(uri).resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        self.run_id: str = self.client.create_run(
            experiment_id, run_name="nimbleml train"
        ).info.run_id
        self.artifacts: list[Path] = []

    def start(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(
            self.run_id, params=[Param(k, str(v)[:500]) for k, v in sorted(params.items())]
        )

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event != "epoch_end":
            return  # one write per epoch: a file store writes a file per metric per call
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(info["epoch"])
        metrics = [Metric(k, v, now, step) for k, v in _scalars(info).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, ok: bool = True) -> None:
        for path in self.artifacts:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def check_spec(spec: str) -> tuple[str, str | None]:
    """(kind, argument) of a ``--log`` value, or ConfigError naming the allowed ones."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in ("tensorboard", "mlflow"):
        raise ConfigError(f"--log {spec!r} is not one of {', '.join(KINDS)}")
    return kind, arg or None


def make(spec: str) -> TensorBoardLogger | MLflowLogger:
    """The logger a ``--log`` value names: ``tensorboard[:DIR]`` or ``mlflow[:URI]``."""
    kind, arg = check_spec(spec)
    if kind == "tensorboard":
        return TensorBoardLogger(arg or TENSORBOARD_DIR)
    return MLflowLogger(arg)
