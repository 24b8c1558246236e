"""Pruning that really removes weights.

- ``prune-structured``: drops whole units of Linear layers and channels of Conv1d/Conv2d
  layers (rows of one layer, the matching columns of the next, through activations, pooling,
  BatchNorm and Flatten; see prune_graph.py), so matrices get smaller.
  ``structured_pruning_check`` says beforehand, in one trace, whether it can apply.
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
from ..inputs import Feeds
from ..models.base import Model
from .base import Context, Recipe, fraction, register
from .prune_graph import (
    Chain,
    cut,
    find_chains,
    importance,
    input_means,
    needs_shapes,
    propagate,
    trace,
)


def structured_pruning_check(module: Any, example_feeds_or_none: Feeds | None) -> str | None:
    """None when ``prune-structured`` can apply to ``module``, else the one-line reason
    ("not fx-traceable: <the error's first line>" or "no prunable layer pair: ..."), the
    words the recipe itself refuses with.

    One torch.fx trace of the module as it is (no copy), so the optimizer can drop the pruned
    candidates before building any. On the 22M-parameter ``bert_style_encoder()`` of
    benchmarks/optimize.py: 2.4 ms (median of 50 on this 2-core CPU; 3-4 ms while other jobs
    ran; the first call 14-22 ms, loading fx's tracer); its answer is "no prunable layer
    pair", as fx keeps nn.TransformerEncoder whole. With example feeds, a model whose chains
    hold convolutions, BatchNorm or Flatten also gets one shape propagation on two rows (a
    forward pass, training flags restored) so that the answer is the recipe's own: 3.3 ms in
    all for the digits CNN of the tests, against 1.9 ms without feeds.
    """
    gm, reason = trace(module)
    if gm is None:
        return reason
    chains, reason = find_chains(gm, None)
    if chains and example_feeds_or_none and needs_shapes(gm, chains):
        chains, reason = find_chains(gm, propagate(gm, example_feeds_or_none))
    return None if chains else reason


@register
class StructuredPrune(Recipe):
    """Remove the ``amount`` share of output channels/units of every prunable layer, with the
    matching inputs of the next layer. prune_graph.py says which chains qualify: activations,
    Dropout, pooling, BatchNorm and Flatten pass; residual adds, concatenations and values
    used twice keep their channels.

    Importance: the L2 norm of each output filter and, where BatchNorm follows, of the filter
    with the BatchNorm folded in (w·|γ|/√(running_var+ε)). BatchNorm divides by the channel's
    spread and so undoes the filter's own scale: ranking by the bare ||w|| keeps a channel
    that BatchNorm multiplies by γ≈0 and drops one it amplifies. The folded norm is the
    channel's gain from the layer's input to the BatchNorm's output; zero weights or a zero γ
    score 0 and go first. Measured on a digits CNN (Conv16-BN-ReLU-Pool-Conv32-BN-ReLU-Pool-
    Linear, 3 seeds, accuracy 0.97, no fine-tuning): 0.92 kept at 25% and 0.69 at 50% with
    the folded norm; |γ| alone 0.89 / 0.55, bare ||w|| 0.90 / 0.62, random 0.89 / 0.60. L1
    instead of L2 scored the same (0.92 / 0.69); L2 stays, as the Linear path always used.

    What a removed channel added on average (its mean on the example rows, times the next
    layer's weights) moves into the next layer's bias: exact for a constant channel before a
    Linear, first-order otherwise. On that CNN it is most of the result: without it, 0.57 at
    25% and 0.21 at 50%.
    """

    name = "prune-structured"
    stage = "source"
    frameworks = ("torch",)

    def __init__(self, amount: float = 0.3) -> None:
        super().__init__(amount=fraction(amount, "prune amount"))

    def apply(self, model: Model, ctx: Context) -> Model:
        torch = require("torch", "structured pruning")
        from ..models.torch_model import TorchModel

        assert isinstance(model, TorchModel)
        if isinstance(model.module, torch.jit.ScriptModule):
            raise UnsupportedError(
                "structured pruning rebuilds layers of the Python nn.Module, and a "
                "TorchScript file is a compiled graph; use prune_method='magnitude' (it "
                "zeroes weights of TorchScript layers too), or pass the nn.Module"
            )
        gm, reason = trace(copy.deepcopy(model.module))
        chains: list[Chain] = []
        example = ctx.example or model.example
        if gm is not None:
            chains, reason = find_chains(gm, propagate(gm, example))
        if not chains:
            raise UnsupportedError(
                f"structured pruning: {reason}; use prune_method='magnitude' instead"
            )
        amount = self._params["amount"]
        means = input_means(gm, chains, example)
        keeps = []
        for chain in chains:  # every score from the original weights, before any cut
            n_keep = max(1, round(chain.width * (1 - amount)))
            keeps.append(torch.sort(torch.topk(importance(gm, chain), n_keep).indices).values)
        for chain, keep in zip(chains, keeps, strict=True):
            cut(gm.get_submodule(chain.producer), keep, 0)
            for name in chain.norms:
                cut(gm.get_submodule(name), keep, 0)
            columns = keep
            if chain.spatial:
                offsets = torch.arange(chain.spatial)
                columns = (keep[:, None] * chain.spatial + offsets[None, :]).reshape(-1)
            cut(gm.get_submodule(chain.consumer), columns, 1, means.get(chain.consumer))
        gm.recompile()
        self._params["layers"] = len(chains)
        self._params["units_removed"] = sum(
            c.width - len(k) for c, k in zip(chains, keeps, strict=True)
        )
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
