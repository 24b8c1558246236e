"""Precision recipes that keep a model in PyTorch: dynamic int8 of its Linear layers
(torch-int8) and bfloat16 where the hardware runs it (bf16)."""

from __future__ import annotations

import copy
from typing import Any

from .._deps import require
from ..errors import UnsupportedError
from ..models.base import Model
from .base import Context, Recipe, register


def _torch_model(model: Model, recipe: str) -> Any:
    from ..models.torch_model import TorchModel

    if not isinstance(model, TorchModel):
        raise UnsupportedError(f"recipe '{recipe}' keeps the model in PyTorch; pass an nn.Module")
    return model


@register
class TorchInt8(Recipe):
    """PyTorch dynamic int8 quantisation of Linear layers, for users who stay in PyTorch."""

    name = "torch-int8"
    stage = "torch"
    frameworks = ("torch",)

    def __init__(self) -> None:
        super().__init__()

    def apply(self, model: Model, ctx: Context) -> Model:
        from ..models.torch_model import quiet

        torch = require("torch", "the torch-int8 recipe")
        tm = _torch_model(model, self.name)
        engines = torch.backends.quantized.supported_engines
        engine = next((e for e in ("x86", "fbgemm", "qnnpack") if e in engines), None)
        if engine is None:
            raise UnsupportedError(f"this torch build has no int8 engine (it has {engines})")
        torch.backends.quantized.engine = engine
        self._params["engine"] = engine
        if isinstance(tm.module, torch.jit.ScriptModule):
            raise UnsupportedError(
                "torch-int8 swaps nn.Linear layers for int8 ones, and a TorchScript file is a "
                "compiled graph whose layers PyTorch cannot swap (it would quantise nothing); "
                "use quantize='int8' (ONNX Runtime int8 on the exported graph), or pass the "
                "Python nn.Module"
            )
        with quiet():
            qmodule = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(tm.module), {torch.nn.Linear}, dtype=torch.qint8
            )
        swapped = sum(
            isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in qmodule.modules()
        )
        if not swapped:
            raise UnsupportedError(
                "torch-int8 found no nn.Linear layer to quantise in this model, so it would "
                "change nothing; use quantize='int8' (ONNX Runtime int8) instead"
            )
        self._params["layers"] = swapped
        layers = [m for m in qmodule.modules() if isinstance(m, torch.nn.TransformerEncoderLayer)]
        for layer in layers:
            # the fast path of TransformerEncoder(Layer) reads Linear weights as tensors, which
            # int8 Linear layers keep behind a method; this flag is what it checks to take
            # the regular path (the activation itself is self.activation either way)
            layer.activation_relu_or_gelu = 0
        if layers:
            self._params["transformer_fast_path"] = False
        return tm.with_module(qmodule)


def bf16_support() -> tuple[bool, str]:
    """Whether bf16 runs natively here, and what was found."""
    from ..bench.machine import cpu_caps, gpus

    caps = cpu_caps()
    if caps.bf16:
        return True, "CPU with " + "/".join(f for f in caps.flags if "bf16" in f)
    for gpu in gpus():
        return True, f"GPU {gpu['name']}"
    return False, "CPU flags " + (", ".join(caps.flags) or "unknown") + ", no NVIDIA GPU"


@register
class BFloat16(Recipe):
    """bf16 weights and compute in PyTorch, only where the hardware runs bf16 natively
    (AVX512_BF16/AMX CPUs, NVIDIA GPUs); inputs and outputs stay float32."""

    name = "bf16"
    stage = "torch"
    frameworks = ("torch",)

    def __init__(self) -> None:
        super().__init__()

    def check(self, model: Model, ctx: Context) -> None:
        super().check(model, ctx)
        ok, found = bf16_support()
        if not ok:
            raise UnsupportedError(
                f"bf16 needs hardware that runs it (a CPU with AVX512_BF16 or AMX, or an NVIDIA "
                f"GPU); this machine has {found}. Use quantize='int8' or 'fp16' instead"
            )

    def apply(self, model: Model, ctx: Context) -> Model:
        torch = require("torch", "the bf16 recipe")
        tm = _torch_model(model, self.name)
        module = _CastWrapper(copy.deepcopy(tm.module).to(torch.bfloat16), torch.bfloat16)
        return tm.with_module(module)


def _cast_wrapper_class() -> Any:
    torch = require("torch", "the bf16 recipe")

    class CastWrapper(torch.nn.Module):  # type: ignore[name-defined]
        """Runs ``inner`` in ``dtype``: float inputs cast in, float outputs cast back."""

        def __init__(self, inner: Any, dtype: Any) -> None:
            super().__init__()
            self.inner, self.dtype = inner, dtype

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            def cast(t: Any, dtype: Any) -> Any:
                return t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t

            out = self.inner(
                *[cast(a, self.dtype) for a in args],
                **{k: cast(v, self.dtype) for k, v in kwargs.items()},
            )
            if isinstance(out, tuple | list):
                return type(out)(cast(o, torch.float32) for o in out)
            if isinstance(out, dict):
                return {k: cast(v, torch.float32) for k, v in out.items()}
            return cast(out, torch.float32)

    return CastWrapper


def _CastWrapper(inner: Any, dtype: Any) -> Any:
    return _cast_wrapper_class()(inner, dtype)
