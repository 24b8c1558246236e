"""nimbleml.profile: where a model's time goes, measured, with what to try.

    report = nimbleml.profile("model.nimble", X, batch_sizes=(1, 32))
    print(report.table())          # op types, top nodes, kernels vs overhead, bottlenecks
    report.save("prof/")           # profile.txt, profile.json, profile.png, Chrome traces

ONNX models and packages run under ONNX Runtime's own profiler (onnx.py), OpenVINO models
and packages under OpenVINO's per-layer counters (openvino.py), PyTorch models
under torch.profiler (pytorch.py), training steps under it too, split into data loading,
forward, backward and optimizer (steps.py). The summary (summary.py) is derived from the
measured tables; the report (report.py) holds the figures and writes the outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import BatchProfile, NodeStat, OpStat, PhaseStat, ProfileReport

__all__ = [
    "BatchProfile",
    "NodeStat",
    "OpStat",
    "PhaseStat",
    "ProfileReport",
    "profile",
]

EXAMPLE_ROWS = 64  # rows that fix a PyTorch model's input names and shapes


def profile(
    model: Any,
    data: Any,
    batch_sizes: Any = (1, 32),
    *,
    train: bool = False,
    output: str | Path | None = None,
    warmup: int = 5,
    runs: int | None = None,
    time_budget_s: float = 1.0,
    train_options: dict[str, Any] | None = None,
    trust_pickle: bool = False,
) -> ProfileReport:
    """Profile ``model`` at each of ``batch_sizes``; returns a ProfileReport.

    ``model``: a .nimble package (or its path), an .onnx file, an OpenVINO .xml (its .bin
    beside it), a TorchScript / .pt2 file, a
    ``module:function`` that builds an nn.Module, a torch.nn.Module, or a nimbleml Model.
    ``data``: the inputs (an array, a dict of arrays, a DataFrame); rows repeat when there
    are fewer than a batch. With ``train=True``: training data as nimbleml.train takes it
    ((X, y), a Dataset or a DataLoader), and a training step is profiled instead;
    ``train_options``: the trainer's loss, optimizer, lr, weight_decay, precision,
    dataloader, seed, device.

    Each batch size: ``warmup`` runs, then ``runs`` profiled runs (default: as many as
    ``time_budget_s`` holds, 10 to 500) and as many timed without the profiler.
    ``output``: a folder for profile.txt, profile.json, profile.png and the traces.
    """
    from ..bench.machine import machine_info
    from .common import Settings, check_batch_sizes
    from .summary import summarize

    sizes = check_batch_sizes(batch_sizes)
    settings = Settings(warmup=warmup, runs=runs, time_budget_s=time_budget_s)
    if train:
        from .steps import check_options, profile_train

        check_options(train_options)
        module, name = _trainable(model, data, trust_pickle)
        report = profile_train(module, data, sizes, settings, name, train_options)
    else:
        if train_options:
            from ..errors import ConfigError

            raise ConfigError("train_options= applies to train=True (a training step)")
        report = _profile_inference(model, data, sizes, settings, trust_pickle)
    report.summary = summarize(report)
    report.machine = machine_info().to_dict()
    if output is not None:
        report.save(output)
    return report


def _profile_inference(model: Any, data: Any, sizes: list[int], settings: Any,
                       trust_pickle: bool) -> ProfileReport:  # fmt: skip
    from ..errors import UnsupportedError
    from ..models.onnx_model import OnnxModel

    adapted, name, notes = _adapt(model, data, trust_pickle)
    feeds = adapted.feeds(data)
    if isinstance(adapted, OnnxModel):
        from .onnx import profile_onnx

        report = profile_onnx(adapted, feeds, sizes, settings, name)
    elif adapted.framework == "openvino":
        from .openvino import profile_openvino

        report = profile_openvino(adapted, feeds, sizes, settings, name)
    elif adapted.framework == "torch":
        from .pytorch import profile_torch

        report = profile_torch(adapted, feeds, sizes, settings, name)
    else:
        raise UnsupportedError(
            f"profiling a {adapted.framework} model is not supported: profile its package "
            "(nimbleml compress makes it an ONNX model), an ONNX or OpenVINO file or a PyTorch "
            "model"
        )
    report.notes[:0] = notes
    return report


def _adapt(model: Any, data: Any, trust_pickle: bool) -> tuple[Any, str, list[str]]:
    """(the Model to profile, its name, notes): a package's model as it runs here."""
    from ..errors import ModelLoadError
    from ..models.loader import load_model
    from ..package import Package, load

    if isinstance(model, str | Path) and not Path(model).exists():
        from ..train.sources import build_model, is_reference

        if not is_reference(str(model)):
            raise ModelLoadError(f"model not found: {model}")
        model = build_model(str(model), flag="MODEL")
    if isinstance(model, str | Path) and Path(model).is_dir():
        model = load(model)
    if isinstance(model, Package):
        notes = []
        if model.fallback_reason or model.using_baseline:
            why = model.fallback_reason or "its recorded fallback"
            notes.append(f"the package runs its baseline here ({why}): that is what was profiled")
        return model.model, model.name, notes
    name = Path(model).name if isinstance(model, str | Path) else type(model).__name__
    return load_model(model, _example(data), trust_pickle=trust_pickle), name, []


def _example(data: Any) -> Any:
    """The first rows of the data: enough to fix a PyTorch model's inputs."""
    if isinstance(data, dict):
        return {k: v[:EXAMPLE_ROWS] for k, v in data.items()}
    if hasattr(data, "iloc"):
        return data.iloc[:EXAMPLE_ROWS]
    if hasattr(data, "__getitem__") and hasattr(data, "shape"):
        return data[:EXAMPLE_ROWS]
    return data


def _trainable(model: Any, data: Any, trust_pickle: bool) -> tuple[Any, str]:
    """An nn.Module to train from a module, a Model, ``module:function`` or a torch file."""
    from .._deps import require
    from ..errors import ConfigError, ModelLoadError

    torch = require("torch", "profiling a training step")
    if isinstance(model, torch.nn.Module):
        return model, type(model).__name__
    if getattr(model, "framework", None) == "torch" and hasattr(model, "module"):
        return model.module, type(model.module).__name__
    if isinstance(model, str | Path):
        from ..models.loader import TORCH_SUFFIXES
        from ..train.sources import build_model, is_reference

        text = str(model)
        if not Path(text).exists() and is_reference(text):
            return build_model(text, flag="MODEL"), text
        path = Path(text)
        if path.is_file() and path.suffix.lower() in TORCH_SUFFIXES:
            from ..models.torch_model import load_torch_file
            from ..train.data import batches

            example = batches(data, 8).sample(8).inputs
            loaded = load_torch_file(path, example, trust_pickle)
            return loaded.module, path.name
        if not path.exists():
            raise ModelLoadError(f"model not found: {text}")
    raise ConfigError(
        f"a training step is profiled on a PyTorch model: give an nn.Module, module:function "
        f"(a function that returns one) or a TorchScript file, not {_what(model)}; packages and "
        "ONNX files are profiled for inference (without --train)"
    )


def _what(model: Any) -> str:
    if isinstance(model, str | Path):
        path = Path(model)
        return "a .nimble package" if path.is_dir() else f"a '{path.suffix}' file ({path.name})"
    return f"a {type(model).__name__}"
