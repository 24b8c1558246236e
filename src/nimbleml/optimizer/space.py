"""The search space: which candidates make sense for this model on this machine, ordered by
the gain they are expected to bring (so a time budget spends itself on the likely winners)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..bench.machine import CpuCaps
from ..compress.base import Recipe, get_recipe
from ..compress.torch_native import bf16_support
from ..models.base import Model

# speed classes: candidates that run the same kernels on the same shapes run at the same
# speed; once one of a class is clearly slower than the best, the rest cannot win
FP32, INT8_DYN, INT8_QDQ, FP16, TORCH = "fp32", "int8-dynamic", "int8-static", "fp16", "torch"
OV_FP32, OV_INT8 = "openvino-fp32", "openvino-int8"


@dataclass(frozen=True)
class Spec:
    """One candidate: the recipe steps by stage, and how it is expected to rank."""

    name: str
    speed_class: str
    prior: float  # expected speedup over fp32 ONNX on a CPU, for ordering only
    source: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    torch: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    onnx: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    lossy: bool = True
    family: str = ""  # candidates of a family share an accuracy behaviour (pruning levels)
    level: float = 0.0  # position within the family (higher = more aggressive)
    notes: tuple[str, ...] = field(default=())

    def steps(self) -> tuple[list[Recipe], list[Recipe], list[Recipe]]:
        def make(items: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]) -> list[Recipe]:
            return [get_recipe(name, **dict(params)) for name, params in items]

        return make(self.source), make(self.torch), make(self.onnx)

    def with_onnx(self, name: str, suffix: str, **params: Any) -> Spec:
        """The same candidate with the first ONNX step's parameters changed."""
        first, *rest = self.onnx
        merged = {**dict(first[1]), **params}
        return replace(
            self,
            name=f"{self.name} {suffix}",
            onnx=((name, tuple(sorted(merged.items()))), *rest),
        )


def _p(**params: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


GRAPH = ("graph-opt", _p())


# model kinds, read from the verified ONNX graph: the order in which candidates pay differs
KINDS = ("transformer", "conv", "mlp")

# expected speedup over fp32 ONNX Runtime on a CPU, by model kind, for ordering only (what
# wins is measured). Measured on a 2-core AVX2 CPU without VNNI (benchmarks/peers.py,
# docs/benchmark-report.md): a BERT-layout encoder gains most from per-channel dynamic int8
# (its per-tensor form breaks a 0.01 cosine budget), a conv net from static int8 and
# OpenVINO (dynamic int8 leaves its Convs in float), an MLP from dynamic int8. "prune"
# scales the pruning candidates: a transformer's come last (each costs a new export and
# verification, and pruning without fine-tuning rarely keeps a trained encoder's accuracy).
PRIORS: dict[str, dict[str, float]] = {
    "transformer": {
        "int8-dyn-pc": 3.0, "fp32": 2.0, "ov-fp32": 1.9, "ov-int8": 1.8, "int8-qdq": 1.7,
        "torch-int8": 1.6, "int8-dyn": 1.2, "fp16": 0.6, "bf16": 1.4, "prune": 0.4,
    },
    "conv": {
        "ov-int8": 2.4, "int8-qdq": 2.3, "ov-fp32": 2.0, "fp32": 1.5, "int8-dyn": 1.1,
        "int8-dyn-pc": 1.05, "torch-int8": 0.9, "fp16": 0.6, "bf16": 1.4, "prune": 1.0,
    },
    "mlp": {
        "int8-dyn": 2.2, "int8-dyn-pc": 2.1, "int8-qdq": 1.9, "fp32": 1.0, "ov-fp32": 0.95,
        "ov-int8": 0.9, "torch-int8": 1.5, "fp16": 0.6, "bf16": 1.4, "prune": 1.0,
    },
}  # fmt: skip
OPENVINO = ("openvino fp32", "openvino int8")


def model_kind(model: Model) -> str:
    """'transformer', 'conv' or 'mlp' (anything else), from an ONNX graph's operators."""
    from ..compress.quantize import transformer_parts
    from ..models.onnx_model import OnnxModel

    if not isinstance(model, OnnxModel):
        return "mlp"
    if transformer_parts(model):
        return "transformer"
    return "conv" if {"Conv", "ConvTranspose"} & set(model.op_types()) else "mlp"


def search_space(
    model: Model, caps: CpuCaps, has_calib: bool, prune: bool = True, kind: str = "mlp"
) -> list[Spec]:
    """Candidates for ``model``, best expected first (the baseline is measured separately).
    ``kind``: the model kind (``model_kind`` of its verified ONNX graph)."""
    from ..models.sklearn_model import SklearnModel, final_estimator

    prior = PRIORS[kind]
    specs: list[Spec] = []
    if model.framework in ("torch", "onnx"):
        vnni = 1.3 if caps.vnni else 1.0
        specs += [
            Spec("onnx int8 dynamic per-channel", INT8_DYN + "-per-channel",
                 prior["int8-dyn-pc"] * vnni, onnx=(("int8", _p(per_channel=True)), GRAPH)),
            Spec("onnx int8 dynamic", INT8_DYN, prior["int8-dyn"] * vnni,
                 onnx=(("int8", _p(per_channel=False)), GRAPH)),
            Spec("onnx fp32", FP32, prior["fp32"], onnx=(GRAPH,), lossy=False),
            Spec("openvino fp32", OV_FP32, prior["ov-fp32"], onnx=(("openvino", _p()),),
                 lossy=False),
        ]  # fmt: skip
        if has_calib:
            for i, method in enumerate(("minmax", "entropy", "percentile")):
                specs.append(
                    Spec(f"onnx int8 static {method}", INT8_QDQ, prior["int8-qdq"] * vnni - 0.01 * i,
                         onnx=(("int8-static", _p(calibration=method, per_channel=True)), GRAPH))
                )  # fmt: skip
            specs.append(
                Spec("openvino int8", OV_INT8, prior["ov-int8"] * vnni,
                     onnx=(("openvino-int8", _p()),))
            )  # fmt: skip
        if caps.bf16:  # OpenVINO's own default where the CPU runs bf16
            specs.append(
                Spec("openvino bf16", OV_FP32 + "-bf16", prior["ov-fp32"] * 1.5,
                     onnx=(("openvino", _p(precision="bf16")),))
            )  # fmt: skip
        specs.append(
            Spec("onnx fp16", FP16, prior["fp16"] if not caps.bf16 else 1.2,
                 onnx=(("fp16", _p()), GRAPH))
        )  # fmt: skip
    if model.framework == "torch":
        if not _scripted(model):  # TorchScript layers cannot be swapped: it would be a no-op
            specs.append(
                Spec("torch int8", TORCH, prior["torch-int8"], torch=(("torch-int8", _p()),))
            )
        if bf16_support()[0]:
            specs.append(Spec("torch bf16", TORCH, prior["bf16"], torch=(("bf16", _p()),)))
        if prune and not _scripted(model):  # structured pruning rebuilds nn.Module layers
            for amount in (0.25, 0.5):
                specs.append(
                    Spec(f"pruned {amount:.0%} + onnx int8", f"{INT8_DYN}-pruned-{amount}",
                         prior["prune"] * prior["int8-dyn"] / (1 - amount) ** 0.5,
                         source=(("prune-structured", _p(amount=amount)),),
                         onnx=(("int8", _p(per_channel=kind == "transformer")), GRAPH),
                         family="prune-structured+int8", level=amount)
                )  # fmt: skip
                specs.append(
                    Spec(f"pruned {amount:.0%} + onnx fp32", f"{FP32}-pruned-{amount}",
                         prior["prune"] * prior["fp32"] / (1 - amount) ** 0.5,
                         source=(("prune-structured", _p(amount=amount)),), onnx=(GRAPH,),
                         family="prune-structured", level=amount)
                )  # fmt: skip
    if isinstance(model, SklearnModel):
        specs.append(Spec("onnx", FP32, 1.0, onnx=(GRAPH,), lossy=False))
        if hasattr(final_estimator(model.estimator), "coef_"):
            specs += [
                Spec("onnx coef-int8", FP32, 1.0, source=(("coef-int8", _p()),), onnx=(GRAPH,)),
                Spec("onnx coef-int16", FP32, 1.0, source=(("coef-int16", _p()),), onnx=(GRAPH,)),
            ]
            if prune:
                for amount in (0.3, 0.6):
                    specs.append(
                        Spec(f"onnx coef-prune {amount:.0%}", FP32, 1.0,
                             source=(("coef-prune", _p(amount=amount)),), onnx=(GRAPH,),
                             family="coef-prune", level=amount)
                    )  # fmt: skip
    return sorted(specs, key=lambda s: -s.prior)


def _scripted(model: Model) -> bool:
    module = getattr(model, "module", None)
    return module is not None and type(module).__module__.startswith("torch.jit")
