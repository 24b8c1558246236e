"""The ensemble verb: several packages over one data set, fused, in batches; with
``--benchmark``, each member and every way to run them timed side by side.

A YAML file (``--config``) holds the same settings in two sections; a flag given wins:

    inference:
      batch_size: 128
      parallel: true          # false: the members one after another
      mode: auto              # or sequential, threaded, fused (wins over parallel)
      mc_samples: 0           # Monte Carlo dropout: PyTorch members with dropout only
    ensemble:
      models: [a.nimble, b.nimble, c.nimble]
      fusion_method: weighted # mean, vote, weighted, uncertainty_weighted
      weights: [2, 1, 1]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer

from .._yaml import read_sections
from ..errors import ConfigError
from ._common import _data, _guard, _show, check_writable

DEFAULTS: dict[str, Any] = {"batch_size": 128, "parallel": True, "mode": None, "mc_samples": 0,
                            "models": None, "fusion_method": "mean", "weights": None}  # fmt: skip
FLAGS = {"models": "the PACKAGE arguments", "fusion_method": "--fusion"}
SECTIONS = {
    "inference": ("batch_size", "parallel", "mode", "mc_samples"),
    "ensemble": ("models", "fusion_method", "weights"),
}


def read_config(path: Path) -> dict[str, Any]:
    """The settings in an ensemble YAML file, flat, keys with underscores; every key and
    value checked, an error naming ``section.key`` otherwise."""
    return read_sections(path, SECTIONS, check)


def check(key: str, value: Any, where: str) -> Any:
    """``value`` if it is a valid ``key``, else ConfigError naming ``where``."""
    from ..runtime.ensemble import FUSIONS, MODES

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where} must be {expected}, got {value!r}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if key == "batch_size" and not (is_int and value >= 1):
        raise bad("a positive integer")
    if key == "mc_samples" and not (is_int and value >= 0):
        raise bad("an integer >= 0")
    if key == "parallel" and not isinstance(value, bool):
        raise bad("true or false")
    if key == "mode" and value not in MODES:
        raise bad(f"one of: {', '.join(MODES)}")
    if key == "fusion_method" and value not in FUSIONS:
        raise bad(f"one of: {', '.join(FUSIONS)}")
    if key == "models":
        value = [value] if isinstance(value, str) else value
        if (
            not isinstance(value, list)
            or len(value) < 2
            or not all(isinstance(v, str) for v in value)
        ):
            raise bad("a list of at least 2 package paths")
    if key == "weights" and not (
        isinstance(value, list)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise bad("a list of numbers, one per model")
    return value


def _weights(text: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            f"--weights takes comma-separated numbers like 2,1,1; got {text!r}"
        ) from None


def settings(given: dict[str, Any], config: Path | None) -> dict[str, Any]:
    """Flags given (not None) over the file's settings, over the defaults; all checked."""
    from_file = read_config(config) if config else {}
    spec = dict(DEFAULTS)
    for key in spec:
        if given.get(key) is not None:
            spec[key] = check(key, given[key], FLAGS.get(key, "--" + key.replace("_", "-")))
        elif key in from_file:
            spec[key] = from_file[key]
    if given.get("fusion_method") not in (None, "weighted") and given.get("weights") is None:
        spec["weights"] = None  # the file's weights went with its weighted fusion
    if not spec["models"]:
        raise ConfigError("no models: give PACKAGE arguments or 'ensemble.models' in --config")
    return spec


def ensemble(
    models: list[str] = typer.Argument(
        None, help=".nimble packages (or model files) that take the same inputs"
    ),
    data: str = typer.Option(
        ..., help="input data (.npz/.npy/.csv); with labels (y), accuracies are reported"
    ),
    target: str | None = typer.Option(None, help="target column of a .csv file"),
    config: Path | None = typer.Option(
        None, "--config", help="YAML file with inference: and ensemble: sections; flags win"
    ),
    fusion: str | None = typer.Option(
        None, help="mean, vote, weighted, uncertainty_weighted [mean]"
    ),
    weights: str | None = typer.Option(None, help="with --fusion weighted: one per model, 2,1,1"),
    batch_size: int | None = typer.Option(None, help="rows per ensemble call [128]"),
    parallel: bool | None = typer.Option(
        None,
        "--parallel/--no-parallel",
        help="time threads, one fused graph and one-after-another on the first batch and "
        "keep the fastest; --no-parallel: one after another [parallel]",
    ),
    mode: str | None = typer.Option(
        None, help="force a way to run: sequential, threaded, fused (or auto)"
    ),
    mc_samples: int | None = typer.Option(
        None, help="Monte Carlo dropout passes; PyTorch members with dropout only [0]"
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="write scores, labels and uncertainty to this .npz"
    ),
    benchmark: bool = typer.Option(
        False, "--benchmark", help="time each member and every way to run them, batch 1 and N"
    ),
    time_budget: float = typer.Option(2.0, help="seconds of --benchmark timing per batch size"),
) -> None:
    """Run packages as one ensemble over a data set: predictions, accuracy, uncertainty.

    With --benchmark, each member and every way to run them (sequential, threaded, one fused
    graph) timed side by side."""
    from ..runtime.ensemble import EnsemblePredictor

    def go() -> None:
        given = {"models": models or None, "batch_size": batch_size, "parallel": parallel,
                 "mode": mode, "mc_samples": mc_samples, "fusion_method": fusion,
                 "weights": _weights(weights) if weights else None}  # fmt: skip
        spec = settings(given, config)
        if output is not None:
            check_writable(output)
        if time_budget <= 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {time_budget}")
        X, y = _data(data, target)
        with EnsemblePredictor(
            spec["models"], fusion=spec["fusion_method"], weights=spec["weights"],
            parallel=spec["parallel"], mc_samples=spec["mc_samples"], mode=spec["mode"],
            example_inputs=X,
        ) as ens:  # fmt: skip
            ens.check_missing(X, f"--data {data}")  # unless every package was verified on NaN
            out = ens.predict_batch(X, spec["batch_size"])
            _show(_summary(ens, out, y, spec))
            if output is not None:
                arrays = {"scores": out.scores, "uncertainty": out.uncertainty}
                if out.labels is not None:
                    arrays["labels"] = out.labels
                np.savez(output, **arrays)  # type: ignore[arg-type]
                _show(f"predictions written to {output}")
            if benchmark:
                sizes = sorted({1, spec["batch_size"]})
                _show(_table(ens.compare(X, sizes, time_budget), ens.fused_unavailable))

    _guard(go)


def _summary(ens: Any, out: Any, y: Any, spec: dict[str, Any]) -> str:
    n = len(out.scores)
    how = ens.mode + (f" ({ens.fused.execution} executor)" if ens.mode == "fused" else "")
    lines = [f"ensemble of {len(ens.names)}: {', '.join(ens.names)}",
             f"fusion: {spec['fusion_method']}; ran {how}; {n} rows in batches of {spec['batch_size']}"]  # fmt: skip
    if ens.timings_ms:
        lines.append("first batch, ms per call: " + ", ".join(
            f"{k.replace('parallel', 'threaded')} {v:.3f}" for k, v in ens.timings_ms.items()))  # fmt: skip
    if y is not None and out.labels is not None:
        y = np.asarray(y).reshape(-1)
        each = ", ".join(f"{name} {(m.argmax(-1) == y).mean():.4f}"
                         for name, m in zip(ens.names, out.members, strict=True))  # fmt: skip
        lines.append(f"accuracy: ensemble {(out.labels == y).mean():.4f}; members: {each}")
    elif y is not None:
        y = np.asarray(y, dtype=np.float64).reshape(n, -1)
        each = ", ".join(f"{name} {np.abs(m.reshape(n, -1) - y).mean():.4f}"
                         for name, m in zip(ens.names, out.members, strict=True))  # fmt: skip
        lines.append(
            f"mae: ensemble {np.abs(out.scores.reshape(n, -1) - y).mean():.4f}; members: {each}"
        )
    lines.append(
        f"mean uncertainty: {out.uncertainty.mean():.4f} (max {out.uncertainty.max():.4f})"
    )
    return "\n".join(lines)


def _table(results: dict[int, dict[str, Any]], fused_unavailable: str | None) -> str:
    """Latency per way and batch size; '*' marks a percentile with too few samples."""
    rows = [["way", "batch", "p50 ms", "p99 ms", "n", "vs sequential"]]
    for batch, stats in results.items():
        seq = stats["sequential"].p50_ms
        for way, s in stats.items():
            ratio = f"{seq / s.p50_ms:.2f}x" if way in ("threaded", "fused") else ""
            rows.append([way, str(batch), s.fmt("p50"), s.fmt("p99"), str(s.n), ratio])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                       for j, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    if fused_unavailable:
        lines.append(f"fused: not possible here ({fused_unavailable})")
    if any("*" in r[2] + r[3] for r in rows):
        lines.append("* a percentile with too few samples behind it")
    return "\n".join(lines)
