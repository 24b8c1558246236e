"""Verbs that make and measure packages: compress, bench, inspect, optimize."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import typer

from ..errors import ConfigError
from ._common import _batch_sizes, _data, _guard, _progress, _show, check_writable
from .cost import after, check_clouds


def compress(
    model: str = typer.Argument(
        ..., help="model file: .onnx, .skops, TorchScript/.pt2, .pkl (trusted)"
    ),
    output: Path = typer.Option(..., "-o", "--output", help="where to write the .nimble package"),
    quantize: str = typer.Option(
        "int8", help="int8, int8-static, fp16, bf16, torch-int8, int16, none"
    ),
    prune: float | None = typer.Option(None, help="share of units/weights to remove, 0-1"),
    prune_method: str = typer.Option("structured", help="structured or magnitude"),
    calib: str | None = typer.Option(None, help="calibration data (.npz/.npy/.csv)"),
    val: str | None = typer.Option(None, help="validation data with labels (.npz X,y or .csv)"),
    target: str | None = typer.Option(None, help="target column of a .csv file"),
    metric: str | None = typer.Option(None, help="accuracy, f1, mse, mae, r2, cosine, agreement"),
    max_drop: str = typer.Option(
        "auto",
        help="largest allowed metric drop (absolute); beyond it the package runs the original. "
        "auto: 0.01 for accuracy, f1 and agreement, no budget for other metrics; none: no budget",
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="allow loading pickle/joblib files (they run code when loaded)",
    ),
    runtime: str = typer.Option(
        "onnxruntime",
        help="what runs the package: onnxruntime, or openvino (with --quantize none, int8 or "
        "int8-static; needs pip install 'nimbleml\\[openvino]')",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
) -> None:
    """Compress a model into a verified .nimble package."""
    from ..compress import compress as run_compress

    def go() -> None:
        from ..compress.api import CompressConfig

        q = None if quantize.lower() == "none" else quantize  # bad values named before any work
        CompressConfig(quantize=cast(Any, q), runtime=cast(Any, runtime))
        check_writable(output, folder=True)
        calib_x, _ = _data(calib, target)
        val_x, val_y = _data(val, target)
        budget = _max_drop(max_drop)
        if budget not in ("auto", None) and val_x is None:
            raise ConfigError("--max-drop needs --val DATA to measure the drop")
        with _progress(not quiet and sys.stderr.isatty()) as say:
            pkg = run_compress(
                model, quantize=None if quantize.lower() == "none" else quantize, prune=prune,
                prune_method=prune_method, calib=calib_x,
                val=(val_x, val_y) if val_x is not None else None, metric=metric,
                max_drop=budget, trust_pickle=trust_pickle, progress=say, runtime=runtime,
            )  # fmt: skip
        pkg.save(output)
        _show(_summary(pkg.manifest, output))

    _guard(go)


def _max_drop(text: str) -> float | str | None:
    """--max-drop: a number >= 0, 'auto' or 'none'."""
    word = text.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else "auto"
    try:
        value = float(word)
    except ValueError:
        raise ConfigError(
            f"--max-drop takes a number such as 0.01, 'auto' or 'none'; got {text!r}"
        ) from None
    if not value >= 0:
        raise ConfigError(f"--max-drop must be >= 0, got {text}")
    return value


def _times(ratio: float, better: str, worse: str) -> str:
    """'2.00x faster', or for a ratio under 1 '1.33x slower' (never '0.75x faster')."""
    if round(ratio, 2) == 1:
        return "no change"
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def _summary(m: dict[str, Any], where: Path | str) -> str:
    from ._common import cli_words

    steps = " + ".join(s["step"] for s in m["recipe"]) or "(none)"
    lines = [f"package: {where}"]
    v = m.get("validation", {})
    fallback = m.get("fallback")
    if fallback:  # the recipe was rejected: say so first, and show what ships
        lines.append(f"FALLBACK: the compressed model ({steps}) was rejected: "
                     f"{cli_words(fallback['reason'])}")  # fmt: skip
        lines.append("recipe: none (the original model, converted and graph-optimised)")
    else:
        lines.append(f"recipe: {steps}")
    lines.append(f"size: {m['baseline']['size_bytes']:,} B -> {m['model']['size_bytes']:,} B "
                 f"({_times(m['baseline']['size_bytes'] / max(1, m['model']['size_bytes']), 'smaller', 'larger')})")  # fmt: skip
    if v.get("metric") and fallback:
        lines.append(f"{v['metric']}: {v['baseline']:.4f}, the original's (the rejected "
                     f"model: {fallback['compressed']:.4f})")  # fmt: skip
    elif v.get("metric"):
        budget = v.get("max_drop")
        limit = "no budget" if budget is None else f"max drop {budget:g}"
        if v.get("max_drop_source") == "default":
            limit += " by default"
        lines.append(
            f"{v['metric']}: baseline {v['baseline']:.4f}, package {v['package']:.4f} "
            f"(drop {v['drop']:.4f}; {limit})"
        )
    for key, b in m.get("benchmark", {}).items():
        ratio = b.get("speedup_p50") or b.get("speedup_throughput")
        gain = f" ({_times(ratio, 'faster', 'slower')})" if ratio else ""
        lines.append(
            f"{key.replace('_', ' ')}: p50 {b['original']['p50_ms']:.3f} ms -> "
            f"{b['package']['p50_ms']:.3f} ms{gain}"
        )
    return "\n".join(lines)


def bench(
    models: list[str] = typer.Argument(
        ..., help="models or .nimble packages; the first is the baseline"
    ),
    data: str = typer.Option(
        ..., help="input data (.npz/.npy/.csv); with labels, the metric is reported"
    ),
    target: str | None = typer.Option(None, help="target column of a .csv file"),
    batch_size: str = typer.Option("1,32", help="comma-separated batch sizes"),
    metric: str | None = typer.Option(None, help="metric when the data has labels"),
    time_budget: float = typer.Option(3.0, help="seconds of timing per model and batch size"),
    json_path: Path | None = typer.Option(None, "--json", help="write the JSON report here"),
    report: Path | None = typer.Option(
        None, help="write report.json, report.txt and PNG charts here"
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="allow loading pickle/joblib files (they run code when loaded)",
    ),
    cloud: str | None = typer.Option(
        None, "--cloud", help="then print the cloud cost estimate for these clouds (aws,gcp,azure)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
) -> None:
    """Benchmark models side by side on the same inputs."""
    from ..bench import TimingConfig, benchmark
    from ..models import load_model

    def go() -> None:
        if json_path:
            check_writable(json_path)
        if report:
            check_writable(report, folder=True)
        X, y = _data(data, target)
        sizes = _batch_sizes(batch_size)
        if time_budget <= 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {time_budget}")
        check_clouds(cloud)
        loaded = [
            m if Path(m).is_dir() else load_model(m, X, trust_pickle=trust_pickle) for m in models
        ]
        with _progress(not quiet and sys.stderr.isatty()) as say:
            result = benchmark(
                loaded, X, sizes, names=[Path(m).name for m in models],
                val=(X, y) if y is not None or metric in ("cosine", "agreement") else None,
                metric=metric, timing=TimingConfig(time_budget_s=time_budget), progress=say,
            )  # fmt: skip
        _show(result.table())
        if json_path:
            result.to_json(json_path)
        if report:
            result.save(report)
            _show(f"report written to {report}/")
        if cloud:
            after(cloud, "in-process figures of this run", report=result)

    _guard(go)


def inspect(package: Path = typer.Argument(..., help="a .nimble package folder")) -> None:
    """Show what a package is, how it was made and what it gained."""
    from ..package import load

    def go() -> None:
        pkg = load(package)
        m = pkg.manifest
        src = m["source"]
        _show(f"nimbleml {m['nimbleml_version']}, made {m['created_at']} on {m['machine']['cpu']}")
        _show(f"source: {src['framework']} {src['object']} (task: {src.get('task')})")
        for s in m["inputs"]:
            _show(f"  input  {s['name']}: {s['dtype']} {s['shape']}")
        for s in m["outputs"]:
            _show(f"  output {s['name']}: {s['dtype']} {s['shape']}")
        _show(f"conversion: {m['conversion'].get('converter')}")
        _show(_runtime_line(m, pkg))
        for step in m["recipe"]:
            _show(f"  step {step['step']} ({step['stage']}): {json.dumps(step['params'])}")
        _show(_summary(m, package))
        if pkg.fallback_reason:
            _show(f"NOTE: on this machine the baseline runs ({pkg.fallback_reason})")

    _guard(go)


def _runtime_line(m: dict[str, Any], pkg: Any) -> str:
    """What runs the package (and why), and the model's files: an OpenVINO IR is two."""
    from ..package import engine_of

    runtime = m.get("runtime", {})
    engine = runtime.get("engine") or engine_of(pkg.baseline if pkg.using_baseline else pkg.model)
    files = m["model"].get("files") or [m["model"]["path"]]
    line = f"runtime: {engine}" + (f" ({runtime['why']})" if runtime.get("why") else "")
    if runtime.get("intra_op_num_threads"):
        line += f", {runtime['intra_op_num_threads']} thread(s)"
    return line + f"\nmodel files: {', '.join(files)}; baseline: {m['baseline']['path']}"


def optimize(
    model: str = typer.Argument(
        ..., help="model file: .onnx, .skops, TorchScript/.pt2, .pkl (trusted)"
    ),
    val: str = typer.Option(..., help="validation data (.npz X,y or .csv with --target)"),
    output: Path = typer.Option(
        ..., "-o", "--output", help="where to write the best .nimble package"
    ),
    target: str | None = typer.Option(None, help="target column of a .csv file"),
    metric: str | None = typer.Option(None, help="accuracy, f1, mse, mae, r2, cosine, agreement"),
    max_drop: float = typer.Option(0.01, help="largest allowed metric drop"),
    relative: bool = typer.Option(False, "--relative", help="max-drop is a share of the baseline"),
    objective: str = typer.Option("latency", help="latency or throughput"),
    batch_size: int = typer.Option(1, help="batch size the latency objective is measured at"),
    batch_sizes: str | None = typer.Option(
        None,
        help="comma-separated batch sizes the model will run at, e.g. 1,32: each candidate is "
        "timed at every one and the worst ratio to the original decides (latency objective)",
    ),
    time_budget: float = typer.Option(
        180.0, help="seconds the whole search may take, package included; 0 for no limit"
    ),
    calib: str | None = typer.Option(
        None, help="calibration data for static int8 [the --val data]"
    ),
    report: Path | None = typer.Option(
        None, help="write optimization.json/.txt and pareto.png here"
    ),
    try_compile: bool = typer.Option(False, "--try-compile", help="also measure torch.compile"),
    train_data: str | None = typer.Option(
        None,
        "--train-data",
        help="labelled training data (.npz X,y or .csv with --target): when every "
        "post-training int8 breaks the budget, quantization-aware training is tried too "
        "(a PyTorch nn.Module saved with torch.save, loaded with --trust-pickle)",
    ),
    qat_epochs: int = typer.Option(3, help="epochs of quantization-aware training"),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="allow loading pickle/joblib files (they run code when loaded)",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
) -> None:
    """Find the fastest model on this machine within an accuracy budget."""
    from ..optimizer import optimize as run_optimize

    def go() -> None:
        check_writable(output, folder=True)
        if report:
            check_writable(report, folder=True)
        X, y = _data(val, target)
        calib_x, _ = _data(calib, target)
        train = _data(train_data, target) if train_data else None
        if train is not None and train[1] is None:
            raise ConfigError(
                f"--train-data {train_data}: quantization-aware training needs labels (y in "
                "the .npz, or --target for a .csv)"
            )
        with _live_candidates(not quiet) as show:
            result = run_optimize(
                model, (X, y), metric=metric or ("accuracy" if y is not None else "cosine"),
                max_drop=max_drop, objective=objective, batch_size=batch_size,
                batch_sizes=_batch_sizes(batch_sizes, "--batch-sizes") if batch_sizes else None,
                time_budget_s=_budget(time_budget), calib=calib_x, relative=relative,
                try_compile=try_compile, trust_pickle=trust_pickle, progress=show,
                train_data=train, qat_options={"epochs": qat_epochs} if train else None,
            )  # fmt: skip
        result.best.save(output)
        _show(result.table())
        _show(f"package: {output}")
        if report:
            result.report(report)
            _show(f"report written to {report}/")

    _guard(go)


def _budget(seconds: float) -> float | None:
    if seconds < 0:
        raise ConfigError(f"--time-budget takes seconds >= 0 (0: no limit), got {seconds:g}")
    return seconds or None


@contextmanager
def _live_candidates(enabled: bool) -> Iterator[Callable[[Any, Any], None]]:
    """A live table of candidates (stderr): the one running now, then its figures, with the
    best so far."""
    if not enabled:
        yield lambda _c, _b: None
        return
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    seen: list[Any] = []
    best_name: list[str] = [""]

    def render() -> Table:
        table = Table(title=f"best so far: {best_name[0]}", title_justify="left")
        for col in ("candidate", "status", "metric", "drop", "p50 ms", "samples/s"):
            table.add_column(col, justify="left" if col in ("candidate", "status") else "right")
        for c in seen[-15:]:
            table.add_row(
                c.name, c.status, *(("" if v is None else f"{v:{fmt}}") for v, fmt in (
                    (c.metric, ".4f"), (c.drop, ".4f"), (c.p50_ms, ".4f"), (c.samples_per_second, ".0f"))),
            )  # fmt: skip
        return table

    with Live(render(), console=Console(stderr=True), transient=True, refresh_per_second=4) as live:

        def show(candidate: Any, best: Any) -> None:
            if seen and seen[-1].status == "running" and seen[-1].name == candidate.name:
                seen[-1] = candidate  # its figures replace the "running" row
            else:
                seen.append(candidate)
            best_name[0] = best.name
            live.update(render())

        yield show
