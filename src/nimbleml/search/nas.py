"""Hardware-aware architecture search judged on the package that would ship:
``nimbleml.search_architecture(train_data, val_data, family="mlp", ...)``.

Each candidate architecture is built, compressed (dynamic int8, the recipe its package will
use) and timed here *before* it is trained: latency depends on the architecture, not on the
weights, so a candidate that breaks a constraint (``latency_ms``, ``size_mb``) is never
trained (its trial is pruned, with the reason). The others are trained with nimbleml.train
(and stopped when a finished candidate at least as fast was ahead of them at the same epoch),
compressed again, their metric measured on the package, not on the float model, and the
package timed again: the latency recorded is the faster of the two timings. The objectives
(metric up, latency p50 at ``batch_size`` down) go to a multi-objective Optuna study: a third
of the trials (at least 4) on scrambled Sobol points, which cover the space evenly where a
random start leaves holes, then NSGA-II. Every Pareto point is a saved ``.nimble`` package;
the front is re-timed side by side at the end, beside the latency the search recorded, so
the search's own measurements are checked. Every candidate is the optimizer's ``Candidate``
and the front its ``pareto`` over the completed trials (the front and its output in
nas_front.py).
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from .._deps import require
from ..errors import ConfigError
from ..inputs import refuse_missing_pair
from ..optimizer.candidate import Candidate
from .nas_front import ArchitectureFront, front_of
from .nas_front import timed as _timed
from .nas_output import prepare as prepare_output
from .trials import quiet_failures

FAMILIES = ("mlp", "cnn", "encoder")


def build(family: str, params: dict[str, Any], inputs: int, classes: int,
          image: tuple[int, ...] | None = None) -> Any:  # fmt: skip
    """The candidate network of ``family`` for ``params``; ``image``: the shape of one sample
    after the batch axis, for "cnn" (C, H, W) and "encoder" (tokens, features)."""
    nn = require("torch", "nimbleml.search_architecture").nn
    if family == "mlp":
        layers: list[Any] = []
        width_in = inputs
        for _ in range(params["layers"]):
            layers += [nn.Linear(width_in, params["width"]), nn.ReLU()]
            width_in = params["width"]
        return nn.Sequential(*layers, nn.Linear(width_in, classes))
    assert image is not None
    if family == "encoder":
        tokens, features = image
        return _encoder_class()(tokens, features, classes, **params)
    c, _h, _w = image
    layers = []
    for i in range(params["blocks"]):
        out = params["channels"] * (2**i)
        layers += [nn.Conv2d(c, out, params["kernel"], padding=params["kernel"] // 2), nn.ReLU()]
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


def _encoder_class() -> Any:
    """A Transformer encoder in the Hugging Face layout (``encoder.layer[i].attention.self.
    query`` ... ``output.dense``), so ``nimbleml.students.shrink`` reads it too; attention
    written with Linear layers and matmuls, which export to ONNX and quantize as they are."""
    torch = require("torch", "nimbleml.search_architecture")
    nn = torch.nn

    class Named(nn.Module):  # type: ignore[name-defined]
        def __init__(self, children: dict[str, Any]) -> None:
            super().__init__()
            for k, v in children.items():
                self.add_module(k, v)

    class Block(nn.Module):  # type: ignore[name-defined]
        def __init__(self, width: int, heads: int, ffn: int) -> None:
            super().__init__()
            self.heads = heads
            self.attention = Named({
                "self": Named({"query": nn.Linear(width, width), "key": nn.Linear(width, width),
                               "value": nn.Linear(width, width)}),
                "output": Named({"dense": nn.Linear(width, width),
                                 "LayerNorm": nn.LayerNorm(width)}),
            })  # fmt: skip
            self.intermediate = Named({"dense": nn.Linear(width, width * ffn)})
            self.output = Named({"dense": nn.Linear(width * ffn, width),
                                 "LayerNorm": nn.LayerNorm(width)})  # fmt: skip

        def forward(self, h: Any) -> Any:
            b, t, d = h.shape
            att = self.attention.self

            def split(x: Any) -> Any:
                return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

            q, k, v = split(att.query(h)), split(att.key(h)), split(att.value(h))
            w = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
            mixed = (w @ v).transpose(1, 2).reshape(b, t, d)
            h = self.attention.output.LayerNorm(h + self.attention.output.dense(mixed))
            inner = torch.nn.functional.gelu(self.intermediate.dense(h))
            return self.output.LayerNorm(h + self.output.dense(inner))

    class LayerEncoder(Named):
        """Holds ``layer``, as a Hugging Face BertEncoder does."""

    class Encoder(nn.Module):  # type: ignore[name-defined]
        def __init__(self, tokens: int, features: int, classes: int, layers: int, width: int,
                     heads: int, ffn: int) -> None:  # fmt: skip
            super().__init__()
            self.embed = nn.Linear(features, width)
            self.position = nn.Parameter(torch.zeros(1, tokens, width))
            self.encoder = LayerEncoder({"layer": nn.ModuleList(Block(width, heads, ffn)
                                                                for _ in range(layers))})  # fmt: skip
            self.head = nn.Linear(width, classes)

        def forward(self, x: Any) -> Any:
            h = self.embed(x) + self.position
            for block in self.encoder.layer:
                h = block(h)
            return self.head(h.mean(dim=1))

    return Encoder


def _space(trial: Any, family: str) -> dict[str, Any]:
    if family == "mlp":
        return {"layers": trial.suggest_int("layers", 1, 4),
                "width": trial.suggest_int("width", 8, 512, log=True)}  # fmt: skip
    if family == "encoder":
        return {"layers": trial.suggest_int("layers", 1, 4),
                "width": trial.suggest_categorical("width", [16, 32, 64, 128]),
                "heads": trial.suggest_categorical("heads", [1, 2, 4]),
                "ffn": trial.suggest_categorical("ffn", [2, 4])}  # fmt: skip
    return {"blocks": trial.suggest_int("blocks", 1, 3),
            "channels": trial.suggest_int("channels", 4, 32, log=True),
            "kernel": trial.suggest_categorical("kernel", [3, 5])}  # fmt: skip


def search_architecture(train_data: tuple[Any, Any], val_data: tuple[Any, Any], *,
                        family: Any = "mlp", metric: str = "accuracy",
                        constraints: dict[str, float] | None = None, n_trials: int = 40,
                        time_budget_s: float | None = 900, batch_size: int = 1,
                        epochs: int = 10, storage: str | None = None,
                        study_name: str = "nimbleml-nas", out_dir: str | Path | None = None,
                        baseline: Any = None, seed: int = 0,
                        start: list[dict[str, Any]] | None = None,
                        progress: Any = None, force: bool = False,
                        **train_options: Any) -> ArchitectureFront:  # fmt: skip
    """Search architectures of ``family`` ("mlp", "cnn", "encoder": a Transformer encoder over
    (N, tokens, features) sequences, or a function(trial) -> nn.Module)
    for the Pareto front of the metric and the package's latency (see the module docstring).
    ``constraints``: {"latency_ms": ..., "size_mb": ...}, checked before training.
    ``out_dir``: where the Pareto packages are kept (front.json and front.png too).
    ``start``: architectures to try first, as parameters of the family's space (e.g. the one
    you would have picked by hand: ``[{"layers": 1, "width": 256}]``). ``progress(info)`` is
    called after each trial with its number (the N of ``trial-N.nimble``), count (its place
    in this run), n_trials, params, state ("complete" or "pruned"), metric and latency_ms, or
    the reason it was not kept. ``out_dir`` must be new or empty; ``force=True`` clears a
    folder that holds only an earlier search's output."""
    optuna = require("optuna", "nimbleml.search_architecture")
    import numpy as np

    from ..bench.machine import machine_info

    X, y, Xv, yv = _checked(train_data, val_data, family, start, constraints)
    constraints = dict(constraints or {})
    classes = int(max(y.max(), yv.max())) + 1
    image = tuple(X.shape[1:]) if X.ndim in (3, 4) else None
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None:
        prepare_output(folder, force)
    # candidates' packages until the front is known: in out_dir, or a temporary folder
    work = folder / ".candidates" if folder is not None else Path(tempfile.mkdtemp(
        prefix="nimble-nas-"))  # fmt: skip
    pruned: dict[str, int] = {}
    options = {"epochs": epochs, "metric": metric, "dataloader": {}, **train_options}

    def objective(trial: Any) -> tuple[float, float]:
        if callable(family):
            model, params = family(trial), dict(trial.params)
        else:
            params = _space(trial, family)
            model = build(family, params, int(np.prod(X.shape[1:])), classes, image)
        timed = _package_figures(model, Xv[:256], None, batch_size)
        trial.set_user_attr("search_latency", timed)
        broken = _broken(timed, constraints)
        if broken:
            pruned[broken] = pruned.get(broken, 0) + 1
            trial.set_user_attr("not_trained", broken)
            raise optuna.TrialPruned(broken)
        from ..train import train

        curve: list[float] = []
        judge = _Dominance(trial, timed["p50_ms"], curve, epochs)
        result = train(model, (X, y), (Xv, yv), **{
            **options, "callbacks": [*options.get("callbacks", ()), judge]})  # fmt: skip
        trial.set_user_attr("curve", curve)
        if judge.reason:
            pruned["dominated while training"] = pruned.get("dominated while training", 0) + 1
            trial.set_user_attr("not_trained", judge.reason)
            raise optuna.TrialPruned(judge.reason)
        final = _package_figures(result.model, Xv, yv, batch_size, metric)
        path = work / f"trial-{trial.number}.nimble"
        final.pop("package").save(path)
        trial.set_user_attr("package", str(path))
        trial.set_user_attr("final", final)
        # the same architecture was timed before and after training, seconds apart: the
        # faster of the two is the machine's speed (a slow phase of this VM lasts seconds)
        latency = min((timed, final), key=lambda f: f["p50_ms"])
        trial.set_user_attr("search_latency", {k: latency[k] for k in ("p50_ms", "p95_ms", "n")})
        return final["metric"], latency["p50_ms"]

    callbacks = [_reporter(progress, n_trials, metric)] if progress is not None else []
    study = _run(optuna, objective, storage, study_name, n_trials, time_budget_s, seed, start,
                 callbacks)  # fmt: skip
    front = front_of(study, folder, work, Xv, batch_size, metric, pruned, machine_info().to_dict())
    if baseline is not None:
        front.baseline = _baseline(baseline, (X, y), (Xv, yv), options, batch_size, metric)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "front.json").write_text(json.dumps(front.to_dict(), indent=2, default=str))
        (folder / "front.txt").write_text(front.table() + "\n")
        front.plot(folder / "front.png")
    return front


def _checked(train_data: Any, val_data: Any, family: Any, start: Any,
             constraints: dict[str, float] | None) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """The options checked and the data as arrays (X, y, Xv, yv): a ConfigError (or DataError
    for a missing value) before any candidate is built."""
    import numpy as np

    if start is not None and not (
        isinstance(start, list) and all(isinstance(p, dict) for p in start)
    ):
        raise ConfigError("start must be a list of parameter dicts, e.g. [{'layers': 1, "
                          "'width': 256}]")  # fmt: skip
    if not (callable(family) or family in FAMILIES):
        raise ConfigError(f"family must be one of {', '.join(FAMILIES)} or a function(trial)")
    unknown = [k for k in constraints or {} if k not in ("latency_ms", "size_mb")]
    if unknown:
        raise ConfigError(f"unknown constraint(s) {', '.join(unknown)}: use latency_ms, size_mb")
    refuse_missing_pair(tuple(train_data), "train_data")
    refuse_missing_pair(tuple(val_data), "val_data")
    X, y = (np.asarray(v) for v in train_data)
    Xv, yv = (np.asarray(v) for v in val_data)
    if family == "cnn" and X.ndim != 4:
        raise ConfigError(f"family 'cnn' needs image inputs (N, C, H, W); these are {X.shape}")
    if family == "encoder" and X.ndim != 3:
        raise ConfigError(
            f"family 'encoder' needs sequences (N, tokens, features); these are {X.shape} "
            "(digits as rows of pixels: X.reshape(-1, 8, 8))"
        )
    return X, y, Xv, yv


def _run(optuna: Any, objective: Any, storage: str | None, study_name: str, n_trials: int,
         time_budget_s: float | None, seed: int, start: list[dict[str, Any]] | None,
         callbacks: list[Any]) -> Any:  # fmt: skip
    """The multi-objective study, run: ``start`` first, Sobol points, then NSGA-II."""
    from .storage import open_storage, storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(storage, study_name, 1) if storage else None
    # a space-filling start (scrambled Sobol points) instead of NSGA-II's random first
    # generation; then NSGA-II with a population small enough to evolve within the budget
    startup = min(n_trials, max(4, n_trials // 3))
    started = time.monotonic()
    # a trial's error reaches the caller, shown once: not Optuna's log of it with a traceback
    with warnings.catch_warnings(), quiet_failures():  # QMCSampler: "experimental" since 3.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            directions=["maximize", "minimize"], study_name=study_name, load_if_exists=True,
            storage=open_storage(optuna, url, 10.0) if url else None,
            sampler=optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                               warn_independent_sampling=False),
        )  # fmt: skip
        for params in start or []:
            study.enqueue_trial(params)
        study.optimize(objective, n_trials=max(startup, len(start or [])), timeout=time_budget_s,
                       callbacks=callbacks)  # fmt: skip
    left = None if time_budget_s is None else time_budget_s - (time.monotonic() - started)
    startup = max(startup, len(start or []))
    if n_trials > startup and (left is None or left > 0):
        study.sampler = optuna.samplers.NSGAIISampler(
            seed=seed, population_size=max(4, min(50, (n_trials - startup) // 2))
        )
        with quiet_failures():
            study.optimize(objective, n_trials=n_trials - startup, timeout=left,
                           callbacks=callbacks)  # fmt: skip
    return study


def _baseline(model: Any, train_data: tuple[Any, Any], val_data: tuple[Any, Any],
              options: dict[str, Any], batch_size: int, metric: str) -> Candidate:  # fmt: skip
    """The hand-designed ``model`` trained and packaged as the candidates are."""
    from ..train import train

    trained = train(model, train_data, val_data, **options).model
    figures = _package_figures(trained, val_data[0], val_data[1], batch_size, metric)
    figures.pop("package")
    return Candidate("baseline", status="baseline", trial=-1,
                     params={"model": type(model).__name__}, metric=figures["metric"],
                     p50_ms=figures["p50_ms"], p95_ms=figures["p95_ms"], n=figures["n"],
                     size_bytes=figures["size_bytes"])  # fmt: skip


class _Dominance:
    """Pruning on the metric, for two objectives: after a quarter of the epochs, a trial
    stops when a finished trial that runs at least as fast was ahead of it at the same epoch
    and ended ahead of where it is now; it could not reach the front. (Optuna's pruners judge
    one value, so they cannot do this for a multi-objective study.)"""

    def __init__(self, trial: Any, latency_ms: float, curve: list[float], epochs: int) -> None:
        self.trial, self.latency_ms, self.curve = trial, latency_ms, curve
        self.first = max(1, epochs // 4)
        self.epochs = epochs
        self.reason: str | None = None

    def __call__(self, event: str, info: dict[str, Any]) -> str | None:
        if event != "epoch_end" or info.get("val_metric") is None:
            return None
        value, epoch = float(info["val_metric"]), int(info["epoch"])
        self.curve.append(value)
        if epoch < self.first or epoch >= self.epochs:
            return None
        from optuna.trial import TrialState

        for other in self.trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            theirs = other.user_attrs.get("curve") or []
            if (other.values[1] <= self.latency_ms and len(theirs) >= epoch
                    and theirs[epoch - 1] > value and other.values[0] > value):  # fmt: skip
                self.reason = (f"dominated at epoch {epoch}: trial {other.number} is as fast "
                               f"and was ahead ({theirs[epoch - 1]:.4f} > {value:.4f})")  # fmt: skip
                return "stop"
        return None


def _reporter(progress: Any, n_trials: int, metric: str) -> Any:
    """An Optuna callback that tells ``progress`` how each trial ended."""

    count = [0]

    def report(_study: Any, trial: Any) -> None:
        done = trial.values is not None
        count[0] += 1
        progress({"number": trial.number, "count": count[0], "n_trials": n_trials,
                  "params": dict(trial.params),
                  "state": "complete" if done else "pruned", "metric_name": metric,
                  "metric": trial.values[0] if done else None,
                  "latency_ms": trial.values[1] if done else None,
                  "reason": None if done else trial.user_attrs.get("not_trained", "pruned")})  # fmt: skip

    return report


def _package_figures(model: Any, X: Any, y: Any, batch_size: int,
                     metric: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The candidate as it would ship (dynamic int8, verified when labels are given): p50/p95
    with n at ``batch_size``, size; its metric and the package when ``y`` is given."""
    from ..bench import TimingConfig, benchmark
    from ..compress import compress

    package = compress(model.eval(), quantize="int8", calib=X[:64],
                       val=(X, y) if y is not None else None, metric=metric if y is not None else None,
                       max_drop=None, benchmark_batch_sizes=(batch_size,),
                       benchmark_time_s=0.2)  # fmt: skip
    size = package.size_bytes()
    out = {**_timed([package], X, batch_size)[0], "size_bytes": size, "size_mb": size / 2**20}
    if y is not None:
        report = benchmark([package], X, (batch_size,), val=(X, y), metric=metric,
                           timing=TimingConfig(warmup_s=0.0, min_samples=1, time_budget_s=0.01),
                           measure_memory=False)  # fmt: skip
        out.update(metric=float(report.results[0].metric_value or 0.0), package=package)
    return out


def _broken(timed: dict[str, Any], constraints: dict[str, float]) -> str | None:
    if "latency_ms" in constraints and timed["p50_ms"] > constraints["latency_ms"]:
        return f"latency over {constraints['latency_ms']} ms"
    if "size_mb" in constraints and timed["size_mb"] > constraints["size_mb"]:
        return f"size over {constraints['size_mb']} MB"
    return None
