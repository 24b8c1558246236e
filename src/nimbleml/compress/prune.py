"""Pruning that really removes weights.

- ``prune-structured``: drops whole units of Linear layers and channels of Conv2d layers
  (rows of one layer, the matching columns of the next), so matrices get smaller.
- ``prune-magnitude``: zeroes the smallest weights; ``sparse-store`` then keeps them sparse.
- ``coef-prune`` / ``coef-int8`` / ``coef-int16``: for scikit-learn linear models, zero the
  insignificant coefficients, or snap coefficients to an 8/16-bit grid.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .._deps import require
from ..errors import UnsupportedError
from ..models.base import Model
from .base import Context, Recipe, fraction, register

# modules that act elementwise on channels: a pruned channel stays a dead channel
_PASS_THROUGH = (
    "ReLU", "ReLU6", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "Hardswish",
    "Mish", "Dropout", "Identity", "BatchNorm1d", "BatchNorm2d",
)  # fmt: skip
_PASS_FUNCTIONS = ("relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "dropout", "elu")


def _chains(gm: Any) -> list[tuple[str, list[str], str]]:
    """(producer, [pass-through modules], consumer): Linear→…→Linear or Conv2d→…→Conv2d paths
    where every intermediate value has exactly one user."""
    torch = require("torch", "structured pruning")
    modules = dict(gm.named_modules())
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        kind = type(modules[node.target])
        if kind not in (torch.nn.Linear, torch.nn.Conv2d):
            continue
        middle: list[str] = []
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if nxt.op == "call_module":
                mod = modules[nxt.target]
                if type(mod) is kind:
                    if kind is torch.nn.Conv2d and (
                        mod.groups != 1 or modules[node.target].groups != 1
                    ):
                        break
                    found.append((node.target, middle, nxt.target))
                    break
                if type(mod).__name__ in _PASS_THROUGH:
                    middle.append(nxt.target)
                    cur = nxt
                    continue
            elif (
                nxt.op in ("call_function", "call_method")
                and getattr(nxt.target, "__name__", str(nxt.target)) in _PASS_FUNCTIONS
            ):
                cur = nxt
                continue
            break
    return found


def _set_module(root: Any, dotted: str, new: Any) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _shrink(module: Any, keep: Any, dim: int) -> Any:
    """A copy of Linear/Conv2d/BatchNorm keeping ``keep`` along output (0) or input (1) dim."""
    torch = require("torch", "structured pruning")
    with torch.no_grad():
        if isinstance(module, torch.nn.Linear):
            w = module.weight.index_select(dim, keep)
            new = torch.nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None)
            new.weight.copy_(w)
            if module.bias is not None:
                new.bias.copy_(module.bias if dim == 1 else module.bias.index_select(0, keep))
            return new
        if isinstance(module, torch.nn.Conv2d):
            w = module.weight.index_select(dim, keep)
            new = torch.nn.Conv2d(
                w.shape[1], w.shape[0], module.kernel_size, module.stride, module.padding,
                module.dilation, 1, module.bias is not None, module.padding_mode,
            )  # fmt: skip
            new.weight.copy_(w)
            if module.bias is not None:
                new.bias.copy_(module.bias if dim == 1 else module.bias.index_select(0, keep))
            return new
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            new = type(module)(len(keep), module.eps, module.momentum, module.affine)
            for name in ("weight", "bias", "running_mean", "running_var"):
                src = getattr(module, name)
                if src is not None:
                    getattr(new, name).copy_(src.index_select(0, keep))
            return new.eval()
    return module


@register
class StructuredPrune(Recipe):
    """Remove the ``amount`` share of hidden units/channels with the smallest L2 norm."""

    name = "prune-structured"
    stage = "source"
    frameworks = ("torch",)

    def __init__(self, amount: float = 0.3) -> None:
        super().__init__(amount=fraction(amount, "prune amount"))

    def apply(self, model: Model, ctx: Context) -> Model:
        torch = require("torch", "structured pruning")
        from ..models.torch_model import TorchModel

        assert isinstance(model, TorchModel)
        try:
            gm = torch.fx.symbolic_trace(copy.deepcopy(model.module))
        except Exception as exc:
            if isinstance(model.module, torch.jit.ScriptModule):
                raise UnsupportedError(
                    "structured pruning rebuilds layers of the Python nn.Module, and a "
                    "TorchScript file is a compiled graph; use prune_method='magnitude' (it "
                    "zeroes weights of TorchScript layers too), or pass the nn.Module"
                ) from exc
            raise UnsupportedError(
                f"structured pruning needs a model torch.fx can trace ({str(exc)[:200]}); "
                "use prune_method='magnitude' instead"
            ) from exc
        chains = _chains(gm)
        if not chains:
            raise UnsupportedError(
                "structured pruning found no Linear→Linear or Conv2d→Conv2d pair to shrink; "
                "use prune_method='magnitude' instead"
            )
        amount = self._params["amount"]
        removed = 0
        for producer, middle, consumer in chains:
            prod = gm.get_submodule(producer)
            width = prod.weight.shape[0]
            n_keep = max(1, round(width * (1 - amount)))
            norms = prod.weight.detach().reshape(width, -1).norm(dim=1)
            keep = torch.sort(torch.topk(norms, n_keep).indices).values
            _set_module(gm, producer, _shrink(prod, keep, 0))
            for name in middle:
                _set_module(gm, name, _shrink(gm.get_submodule(name), keep, 0))
            _set_module(gm, consumer, _shrink(gm.get_submodule(consumer), keep, 1))
            removed += width - n_keep
        gm.recompile()
        self._params["layers"] = len(chains)
        self._params["units_removed"] = removed
        return model.with_module(gm.eval())


_MAGNITUDE_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def _kind(module: Any) -> str:
    """A module's layer type; TorchScript modules keep it in ``original_name``."""
    return str(getattr(module, "original_name", None) or type(module).__name__)


@register
class MagnitudePrune(Recipe):
    """Zero the ``amount`` share of Linear/Conv weights with the smallest magnitude (global);
    works on TorchScript files too (their parameters are edited in place)."""

    name = "prune-magnitude"
    stage = "source"
    frameworks = ("torch",)

    def __init__(self, amount: float = 0.5) -> None:
        super().__init__(amount=fraction(amount, "prune amount"))

    def apply(self, model: Model, ctx: Context) -> Model:
        torch = require("torch", "magnitude pruning")
        from ..models.torch_model import TorchModel

        assert isinstance(model, TorchModel)
        module = copy.deepcopy(model.module)
        weights = [m.weight for m in module.modules() if _kind(m) in _MAGNITUDE_LAYERS]
        if not weights:
            raise UnsupportedError(
                f"magnitude pruning zeroes weights of {', '.join(_MAGNITUDE_LAYERS)} layers and "
                "this model has none; prune a model built from them, or drop prune="
            )
        with torch.no_grad():
            magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
            k = max(1, int(magnitudes.numel() * self._params["amount"]))
            threshold = torch.kthvalue(magnitudes, k).values
            for w in weights:
                w.mul_((w.abs() > threshold).to(w.dtype))
        self._params["zeroed"] = int(sum(int((w == 0).sum()) for w in weights))
        return model.with_module(module)


# -- scikit-learn linear models ----------------------------------------------------------
def _linear(model: Model, recipe: str) -> tuple[Any, Any]:
    from ..models.sklearn_model import SklearnModel, final_estimator

    if not isinstance(model, SklearnModel):
        raise UnsupportedError(f"recipe '{recipe}' works on scikit-learn linear models")
    est = copy.deepcopy(model.estimator)
    final = final_estimator(est)
    if not hasattr(final, "coef_"):
        raise UnsupportedError(
            f"recipe '{recipe}' needs a linear model (with coef_); "
            f"{type(final).__name__} has none. Use quantize=None"
        )
    return est, final


@register
class CoefPrune(Recipe):
    """Zero the ``amount`` share of a linear model's coefficients with the smallest |w|."""

    name = "coef-prune"
    stage = "source"
    frameworks = ("sklearn",)

    def __init__(self, amount: float = 0.3) -> None:
        super().__init__(amount=fraction(amount, "prune amount"))

    def apply(self, model: Model, ctx: Context) -> Model:
        from ..models.sklearn_model import SklearnModel

        est, final = _linear(model, self.name)
        coef = np.asarray(final.coef_, dtype=np.float64)
        threshold = np.quantile(np.abs(coef), self._params["amount"])
        final.coef_ = np.where(np.abs(coef) <= threshold, 0.0, coef).astype(final.coef_.dtype)
        self._params["zeroed"] = int(np.sum(final.coef_ == 0))
        return SklearnModel(est, coef_bits=getattr(model, "coef_bits", None))


class _CoefQuant(Recipe):
    bits: int
    stage = "source"
    frameworks = ("sklearn",)

    def __init__(self) -> None:
        super().__init__(bits=self.bits, scheme="symmetric, one scale per output row")

    def apply(self, model: Model, ctx: Context) -> Model:
        from ..models.sklearn_model import SklearnModel

        est, final = _linear(model, self.name)
        coef = np.atleast_2d(np.asarray(final.coef_, dtype=np.float64))
        levels = 2 ** (self.bits - 1) - 1
        scale = np.abs(coef).max(axis=1, keepdims=True) / levels
        scale[scale == 0] = 1.0
        snapped = np.round(coef / scale) * scale
        final.coef_ = snapped.reshape(np.shape(final.coef_)).astype(final.coef_.dtype)
        # text pipelines then store the coefficients as integers (SklearnModel.coef_bits)
        return SklearnModel(est, coef_bits=self.bits)


@register
class CoefInt8(_CoefQuant):
    """Snap a linear model's coefficients to 8-bit levels (255 per output row)."""

    name = "coef-int8"
    bits = 8


@register
class CoefInt16(_CoefQuant):
    """Snap a linear model's coefficients to 16-bit levels."""

    name = "coef-int16"
    bits = 16
