"""The search space: which candidates make sense for this model on this machine, ordered by
the gain they are expected to bring (so a time budget spends itself on the likely winners)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..bench.machine import CpuCaps
from ..compress.base import Recipe, get_recipe
from ..compress.quantize import bf16_support
from ..models.base import Model

# speed classes: candidates that run the same kernels on the same shapes run at the same
# speed; once one of a class is clearly slower than the best, the rest cannot win
FP32, INT8_DYN, INT8_QDQ, FP16, TORCH = "fp32", "int8-dynamic", "int8-static", "fp16", "torch"


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


def search_space(model: Model, caps: CpuCaps, has_calib: bool, prune: bool = True) -> list[Spec]:
    """Candidates for ``model``, best expected first (the baseline is measured separately)."""
    from ..models.sklearn_model import SklearnModel, final_estimator

    specs: list[Spec] = []
    if model.framework in ("torch", "onnx"):
        vnni = 1.3 if caps.vnni else 1.0
        specs += [
            Spec("onnx int8 dynamic", INT8_DYN, 2.2 * vnni, onnx=(("int8", _p(per_channel=False)), GRAPH)),
            Spec("onnx int8 dynamic per-channel", INT8_DYN + "-per-channel", 2.1 * vnni,
                 onnx=(("int8", _p(per_channel=True)), GRAPH)),
            Spec("onnx fp32", FP32, 1.0, onnx=(GRAPH,), lossy=False),
        ]  # fmt: skip
        if has_calib:
            for i, method in enumerate(("minmax", "entropy", "percentile")):
                specs.append(
                    Spec(f"onnx int8 static {method}", INT8_QDQ, 1.9 * vnni - 0.01 * i,
                         onnx=(("int8-static", _p(calibration=method, per_channel=True)), GRAPH))
                )  # fmt: skip
        specs.append(
            Spec("onnx fp16", FP16, 0.6 if not caps.bf16 else 1.2, onnx=(("fp16", _p()), GRAPH))
        )
    if model.framework == "torch":
        if not _scripted(model):  # TorchScript layers cannot be swapped: it would be a no-op
            specs.append(Spec("torch int8", TORCH, 1.5, torch=(("torch-int8", _p()),)))
        if bf16_support()[0]:
            specs.append(Spec("torch bf16", TORCH, 1.4, torch=(("bf16", _p()),)))
        if prune and not _scripted(model):  # structured pruning rebuilds nn.Module layers
            for amount in (0.25, 0.5):
                specs.append(
                    Spec(f"pruned {amount:.0%} + onnx int8", f"{INT8_DYN}-pruned-{amount}",
                         2.2 / (1 - amount) ** 0.5,
                         source=(("prune-structured", _p(amount=amount)),),
                         onnx=(("int8", _p(per_channel=False)), GRAPH),
                         family="prune-structured+int8", level=amount)
                )  # fmt: skip
                specs.append(
                    Spec(f"pruned {amount:.0%} + onnx fp32", f"{FP32}-pruned-{amount}",
                         1.0 / (1 - amount) ** 0.5,
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
