"""Quantization-aware training: ``nimbleml.qat`` and the ``qat`` recipe.

When post-training int8 breaks the accuracy budget, the model is fine-tuned while it sees
the rounding it will get: every quantized layer runs with fake quantization that simulates
what ONNX Runtime's quantizer then does to it, for the recipe that follows (``quantizer()``):

- static (``int8-static``, QDQ; Linear and Conv): the layer's input and output tensors per
  tensor, asymmetric, on the calibration set's min/max with 0 inside the range (ORT's MinMax
  calibrator), uint8 or int8 as this CPU's layout says;
- dynamic (``int8``; Linear only): the input per tensor, uint8, on the call's own min/max,
  the output left float;
- the weights: symmetric, per output channel (or per tensor), 7 bits without VNNI
  (``reduce_range``).

Static ranges are measured again on the calibration rows every ``recalibrate_every`` steps,
so at the end they are the ones ONNX Runtime will compute for the fine-tuned weights: the
package is the plain int8 recipe applied to the fine-tuned model, nothing is carried over by
hand. Gradients pass the rounding straight through (the STE). The float model is the
teacher by default (``nimbleml.distill``: its outputs are cached once), the labels the rest
of the loss. Then the package is verified against the *original* model and falls back to it
when the budget still does not hold.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._deps import require
from ..compress.base import Context, Recipe, register
from ..compress.quantize import int8_layout
from ..errors import ConfigError, DataError, UnsupportedError
from ..inputs import batch_size, refuse_missing, refuse_missing_pair, take
from ..models.base import Model

CALIB_BATCH, CALIB_ROWS = 32, 512  # what the int8-static recipe feeds ONNX Runtime
ACT_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}
QUANTIZE = ("int8-static", "int8")


@dataclass(frozen=True)
class Scheme:
    """What ONNX Runtime's quantizer will do, to simulate: ``dynamic`` (activations rounded
    per call on their own min/max, outputs left float, Linear layers only) or static
    (calibrated ranges on inputs and outputs, Conv too); weights symmetric, per channel or
    per tensor, to ``weight_max`` (127, or 64 with reduce_range)."""

    dynamic: bool
    per_channel: bool
    act: tuple[int, int]
    weight_max: int

    @classmethod
    def of(cls, quantize: str, per_channel: bool, caps: Any) -> Scheme:
        layout = int8_layout(caps)
        dynamic = quantize == "int8"
        act = ACT_RANGE["uint8" if dynamic else layout["activation"]]
        return cls(dynamic, per_channel, act, 64 if layout["reduce_range"] else 127)


@functools.cache
def _fake_quant_class() -> Any:
    torch = require("torch", "nimbleml.qat")
    F = torch.nn.functional

    class FakeQuant(torch.nn.Module):  # type: ignore[name-defined]
        """A Linear/Conv layer that sees its int8 rounding: input, weights (and output)."""

        def __init__(self, inner: Any, scheme: Scheme) -> None:
            super().__init__()
            self.inner, self.scheme = inner, scheme
            for side in ("in", "out"):  # the calibrated ranges (static)
                self.register_buffer(f"{side}_lo", torch.zeros(()))
                self.register_buffer(f"{side}_hi", torch.zeros(()))
            self.observing = False

        def _round(self, x: Any, lo: float, hi: float) -> Any:
            qmin, qmax = self.scheme.act
            lo, hi = min(lo, 0.0), max(hi, 0.0)  # 0 is always exact
            scale = (hi - lo) / (qmax - qmin)
            if scale <= 0:
                return x
            zero = round(qmin - lo / scale)  # half to even, as numpy.round in ORT
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)

        def _act(self, x: Any, side: str) -> Any:
            if self.scheme.dynamic:
                if side == "out":
                    return x
                return self._round(x, float(x.detach().min()), float(x.detach().max()))
            lo, hi = getattr(self, f"{side}_lo"), getattr(self, f"{side}_hi")
            if self.observing:
                lo.copy_(torch.minimum(lo, x.detach().min()))
                hi.copy_(torch.maximum(hi, x.detach().max()))
                return x
            return self._round(x, float(lo), float(hi))

        def _weight(self) -> Any:
            w = self.inner.weight
            if self.observing:
                return w
            m = self.scheme.weight_max
            amax = w.detach().abs().flatten(1).amax(1)
            if not self.scheme.per_channel:
                amax = amax.max().expand_as(amax)
            scale = torch.where(amax > 0, amax / m, torch.ones_like(amax)).float()
            zero = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -m, m)

        def forward(self, x: Any) -> Any:
            x = self._act(x, "in")
            w = self._weight()
            if isinstance(self.inner, torch.nn.Linear):
                y = F.linear(x, w, self.inner.bias)
            else:
                y = self.inner._conv_forward(x, w, self.inner.bias)
            return self._act(y, "out")

    return FakeQuant


def _layers(scheme: Scheme) -> tuple[type, ...]:
    """The layers ONNX Runtime quantizes: MatMul/Gemm always, Conv in static mode only."""
    torch = require("torch", "nimbleml.qat")
    if scheme.dynamic:
        return (torch.nn.Linear,)
    return (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


def wrap(module: Any, scheme: Scheme) -> int:
    """Replace the quantized layers of ``module`` (in place) by their fake-quant twins; the
    number replaced."""
    fake_quant, layers, n = _fake_quant_class(), _layers(scheme), 0
    for name, child in list(module.named_children()):
        if isinstance(child, layers):
            setattr(module, name, fake_quant(child, scheme))
            n += 1
        else:
            n += wrap(child, scheme)
    return n


def unwrap(module: Any) -> Any:
    """The float layers back in place of their fake-quant twins, with the trained weights."""
    for name, child in list(module.named_children()):
        if hasattr(child, "scheme") and hasattr(child, "inner"):
            setattr(module, name, child.inner)
        else:
            unwrap(child)
    return module


def calibrate(module: Any, model: Any, feeds: Any) -> None:
    """Measure every static fake-quant range on the calibration rows, as ORT's MinMax
    calibrator does (the same batches of 32, the first 512 rows)."""
    torch = require("torch", "nimbleml.qat")
    from ..train.loop import call

    twins = [m for m in module.modules() if hasattr(m, "observing")]
    if not twins or twins[0].scheme.dynamic:
        return
    was_training = module.training
    module.eval()
    for m in twins:
        m.observing = True
        for buf in (m.in_lo, m.in_hi, m.out_lo, m.out_hi):
            buf.zero_()
    try:
        n = min(batch_size(feeds), CALIB_ROWS)
        with torch.no_grad():
            for i in range(0, n, CALIB_BATCH):
                tensors = model._tensors(take(feeds, slice(i, min(i + CALIB_BATCH, n))))
                call(module, tensors if model.by_name else tuple(tensors.values()))
    finally:
        for m in twins:
            m.observing = False
        module.train(was_training)


@register
class QuantAwareTraining(Recipe):
    """Fine-tune a PyTorch model with fake int8 quantization (ONNX Runtime's rounding,
    simulated), the float model as teacher; follow it with the recipes of ``quantizer()``."""

    name = "qat"
    stage = "source"
    frameworks = ("torch",)

    def __init__(self, quantize: str = "int8-static", per_channel: bool | None = None,
                 epochs: int = 3, lr: float = 1e-3, teacher: bool = True,
                 temperature: float = 2.0, alpha: float = 0.5, recalibrate_every: int = 10,
                 **train_options: Any) -> None:  # fmt: skip
        from ..train.config import TrainConfig

        if quantize not in QUANTIZE:
            raise ConfigError(
                f"qat quantize={quantize!r}: choose 'int8-static' (calibrated QDQ) or 'int8' "
                "(dynamic)"
            )
        if per_channel is None:  # the post-training recipes' defaults
            per_channel = quantize == "int8-static"
        if train_options.get("precision", "fp32") != "fp32":
            raise ConfigError(
                f"qat trains in fp32 (the fake quantization is exact there); drop "
                f"precision={train_options['precision']!r}"
            )
        train_options.pop("precision", None)
        for key in ("loss", "callbacks"):
            if key in train_options:
                raise ConfigError(
                    f"qat sets {key}= itself (the distillation loss, the range calibration); "
                    f"drop {key}="
                )
        if not isinstance(teacher, bool):
            raise ConfigError(f"teacher must be True or False, got {teacher!r}")
        if not isinstance(recalibrate_every, int) or recalibrate_every < 1:
            raise ConfigError(
                f"recalibrate_every must be a whole number of steps >= 1, got {recalibrate_every!r}"
            )
        options = {"dataloader": {}, "scheduler": "cosine", **train_options}
        TrainConfig(epochs=epochs, lr=lr, **options)  # a bad option fails before training
        super().__init__(quantize=quantize, per_channel=bool(per_channel), epochs=epochs, lr=lr,
                         teacher=teacher, temperature=temperature, alpha=alpha,
                         recalibrate_every=recalibrate_every, **options)  # fmt: skip

    def quantizer(self) -> list[Recipe]:
        """The ONNX steps that must follow, with the rounding this training simulated."""
        from ..compress.quantize import DynamicInt8, GraphOptimize, StaticInt8

        per_channel = self._params["per_channel"]
        if self._params["quantize"] == "int8":
            return [DynamicInt8(per_channel=per_channel), GraphOptimize()]
        return [StaticInt8(calibration="minmax", per_channel=per_channel), GraphOptimize()]

    def check(self, model: Model, ctx: Context) -> None:
        super().check(model, ctx)
        if ctx.train is None:
            raise ConfigError(
                "qat fine-tunes the model: pass train_data=(X, y) (or a Dataset) with labels"
            )
        if ctx.calib is None and self._params["quantize"] == "int8-static":
            raise ConfigError("qat needs calibration inputs: pass calib= (a few hundred rows)")
        torch = require("torch", "nimbleml.qat")
        module = getattr(model, "module", None)
        if module is None:
            raise UnsupportedError("qat fine-tunes a PyTorch nn.Module")
        if isinstance(module, torch.jit.ScriptModule):
            raise UnsupportedError(
                "qat swaps the Linear/Conv layers of a Python nn.Module; a TorchScript file "
                "is a compiled graph: pass the nn.Module"
            )
        scheme = Scheme.of(self._params["quantize"], self._params["per_channel"], ctx.caps)
        if not any(isinstance(m, _layers(scheme)) for m in module.modules()):
            raise UnsupportedError(
                f"qat found no layer {self._params['quantize']} quantizes in this model "
                f"({', '.join(t.__name__ for t in _layers(scheme))})"
            )

    def apply(self, model: Model, ctx: Context) -> Model:
        from ..train import train
        from .kd import distill

        started = time.perf_counter()
        params = dict(self._params)
        scheme = Scheme.of(params.pop("quantize"), params.pop("per_channel"), ctx.caps)
        epochs, lr, use_teacher = params.pop("epochs"), params.pop("lr"), params.pop("teacher")
        temperature, alpha = params.pop("temperature"), params.pop("alpha")
        every = params.pop("recalibrate_every")
        original = model.module  # type: ignore[attr-defined]
        student = copy.deepcopy(original)
        layers = wrap(student, scheme)
        calibrate(student, model, ctx.calib)
        steps = [0]

        def recalibrate(event: str, _info: dict[str, Any]) -> None:
            if event == "step_end":
                steps[0] += 1
                if steps[0] % every == 0:
                    calibrate(student, model, ctx.calib)

        options = {"epochs": epochs, "lr": lr, "precision": "fp32",
                   "callbacks": [recalibrate], **params}  # fmt: skip
        if use_teacher:
            result = distill(original, student, ctx.train, None, temperature=temperature,
                             alpha=alpha, baseline=False, compare_models=False, views=None,
                             features=None, **options)  # fmt: skip
            history = result.history
        else:
            history = train(student, ctx.train, None, **options).history
        calibrate(student, model, ctx.calib)  # the ranges ORT will measure on these weights
        tuned = unwrap(student).eval()
        self._params.update(
            layers=layers, steps=steps[0], seconds=round(time.perf_counter() - started, 2),
            train_loss=history[-1].get("train_loss") if history else None,
            activation="uint8" if scheme.act[0] == 0 else "int8",
            weight_bits=8 if scheme.weight_max == 127 else 7,
        )  # fmt: skip
        self.tuned = tuned  # for nimbleml.qat's result; not a parameter
        return model.with_module(tuned)  # type: ignore[attr-defined]


@dataclass
class QATResult:
    """``package``: the verified int8 package (or the original, if the budget still broke);
    ``model``: the fine-tuned float module; ``rows``: original, post-training int8 and QAT
    int8 measured on the same validation rows."""

    package: Any
    model: Any
    rows: list[dict[str, Any]] = field(default_factory=list)
    metric: str = ""
    max_drop: float | None = None

    @property
    def met_budget(self) -> bool:
        return not self.package.using_baseline

    def table(self) -> str:
        lines = [f"{'model':34s} {self.metric:>10s} {'drop':>9s} {'p50 ms bs1':>11s}  verdict"]
        for r in self.rows:
            p50 = f"{r['p50_ms']:.4f}" if r.get("p50_ms") is not None else "-"
            lines.append(f"{r['name']:34s} {r['metric']:10.5f} {r['drop']:+9.5f} {p50:>11s}  "
                         f"{r.get('verdict', '')}")  # fmt: skip
        return "\n".join(lines)


def qat(model: Any, train_data: Any, val_data: Any, *, quantize: str = "int8-static",
        per_channel: bool | None = None, epochs: int = 3, lr: float = 1e-3,
        teacher: bool = True, temperature: float = 2.0, alpha: float = 0.5,
        metric: Any = None, max_drop: float | str | None = "auto", calib: Any = None,
        example_inputs: Any = None, recalibrate_every: int = 10,
        **train_options: Any) -> QATResult:  # fmt: skip
    """Fine-tune ``model`` (a torch nn.Module) with fake int8 quantization on ``train_data``
    ((X, y) or a Dataset), then package it with ``quantize`` ('int8-static': calibrated QDQ,
    or 'int8': dynamic), verified on ``val_data`` against the original within ``max_drop``;
    the package falls back to the original when the budget still breaks. ``calib``:
    calibration inputs (default: the first 512 training inputs). ``teacher``: distil from
    the float model (its outputs cached once) rather than train on the labels alone. Every
    option of ``nimbleml.train`` applies (batch_size, weight_decay, ...); the schedule is
    cosine unless ``scheduler=`` says otherwise, so the weights settle on the int8 grid."""
    from ..compress.api import finish
    from ..compress.pipeline import build, prepare, val_parts
    from ..metrics import resolve

    torch = require("torch", "nimbleml.qat")
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"qat fine-tunes a torch.nn.Module, got {type(model).__name__}")
    if val_parts(val_data)[1] is None:
        raise ConfigError("qat needs labelled validation data: val_data=(X, y)")
    step = QuantAwareTraining(quantize=quantize, per_channel=per_channel, epochs=epochs, lr=lr,
                              teacher=teacher, temperature=temperature, alpha=alpha,
                              recalibrate_every=recalibrate_every, **train_options)  # fmt: skip
    check_data(train_data, val_data, calib)
    if calib is None:
        calib = _first_inputs(train_data, CALIB_ROWS)
    p = prepare(model, example_inputs, calib, val_data)
    p.ctx.train = train_data
    step.check(p.source, p.ctx)  # before the post-training int8 it is compared with
    chosen = resolve(metric, p.source.task)
    ptq, _ = build(p, ([], [], step.quantizer()))
    package = finish(p, ([step], [], step.quantizer()), metric=metric, max_drop=max_drop)
    v, fallback = package.manifest["validation"], package.manifest["fallback"]
    base, ptq_value = p.metric_of(chosen, p.source), p.metric_of(chosen, ptq)
    qat_value = fallback["compressed"] if fallback else v["package"]
    budget = v.get("max_drop")
    ms = _p50s({"original": p.source, "ptq": ptq, "qat": package.model}, p.base_feeds)

    def verdict(drop: float) -> str:
        if budget is None:
            return "no budget"
        return "meets max_drop" if drop <= budget else f"misses max_drop {budget:g}"

    qat_drop = chosen.drop(base, qat_value)
    rows = [
        {"name": f"original ({p.source.framework})", "metric": base, "drop": 0.0,
         "p50_ms": ms["original"], "verdict": "baseline"},
        {"name": f"post-training {quantize}", "metric": ptq_value,
         "drop": chosen.drop(base, ptq_value), "p50_ms": ms["ptq"],
         "verdict": verdict(chosen.drop(base, ptq_value))},
        {"name": f"QAT {quantize} ({epochs} epochs)", "metric": qat_value, "drop": qat_drop,
         "p50_ms": None if package.using_baseline else ms["qat"],
         "verdict": verdict(qat_drop)
         + ("; the package runs the original" if package.using_baseline else "")},
    ]  # fmt: skip
    return QATResult(package=package, model=getattr(step, "tuned", None), rows=rows,
                     metric=chosen.name, max_drop=budget)  # fmt: skip


def check_data(train_data: Any, val_data: Any, calib: Any = None) -> None:
    """Empty or holding a missing value: named as the argument the user gave (the training
    data, not the calibration rows taken from it)."""
    from ..train.sources import rows

    if isinstance(train_data, list):
        train_data = tuple(train_data)
    if rows(train_data) == 0:
        raise DataError(
            "train_data holds no rows: give at least one labelled sample to fine-tune on (the "
            "calibration rows are its first inputs unless calib= is given)"
        )
    refuse_missing_pair(train_data, "train_data")
    refuse_missing_pair(val_data, "val_data")
    if calib is not None:
        refuse_missing(calib, "calib")


def _p50s(models: dict[str, Model], feeds: Any, budget_s: float = 0.3) -> dict[str, float]:
    """p50 ms at batch 1 of each model, timed one after the other in this run."""
    from ..bench.timer import TimingConfig, time_calls
    from ..inputs import rows

    one = rows(feeds, 1)
    timing = TimingConfig(warmup_s=0.05, min_samples=200, time_budget_s=budget_s)
    return {k: time_calls(functools.partial(m.run, one), timing).p50_ms for k, m in models.items()}


def _first_inputs(data: Any, n: int) -> Any:
    """The first ``n`` inputs of (X, y) or a Dataset, as numpy (a dict for named inputs)."""
    from ..train.data import batches

    if isinstance(data, tuple | list) and len(data) == 2:
        x = data[0]
        if isinstance(x, dict):
            return {k: np.asarray(v[:n]) for k, v in x.items()}
        return x[:n].detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)[:n]
    chunks: list[Any] = []
    rows = 0
    for b in batches(data, 64, shuffle=False).epoch(0):
        chunks.append(b.inputs)
        rows += b.n
        if rows >= n:
            break
    if not chunks:
        raise DataError("train_data holds no rows: give at least one labelled sample")
    if isinstance(chunks[0], dict):
        return {k: np.concatenate([c[k].numpy() for c in chunks])[:n] for k in chunks[0]}
    return np.concatenate([c.numpy() for c in chunks])[:n]
