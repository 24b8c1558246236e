"""Example inputs for an nn.Module that came without any, where the module says them plainly.

``compress(module)`` with no data needs inputs to export, verify and time the model. A first
``Linear`` layer fixes them (float32, ``(batch, in_features)``), and so does a first
``Embedding`` (int64 token ids, plus a mask where ``forward`` takes one). Anything else (a
convolution's image size, a first layer that is not the first one called) is a guess, so it
is refused with the argument to pass instead. The inputs are synthetic: they prove the
conversion, not the accuracy, and the package's manifest says so.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..errors import ConfigError

ROWS = 64
SEQ = 16
# layers that come first in registration order without fixing the input
_TRANSPARENT = ("Dropout", "Dropout1d", "Dropout2d", "Identity", "AlphaDropout")


def first_layer(module: Any) -> tuple[str, Any] | None:
    """(qualified name, module) of the first leaf layer in registration order."""
    for name, sub in module.named_modules():
        if sub is module or any(True for _ in sub.children()):
            continue
        if layer_kind(sub) in _TRANSPARENT:
            continue
        return name, sub
    return None


def layer_kind(layer: Any) -> str:
    """A layer's class name, also inside a TorchScript module (which keeps it as
    ``original_name``)."""
    return str(getattr(layer, "original_name", type(layer).__name__))


def _required_args(module: Any) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]


_CONV_DIMS = {"Conv1d": "L", "Conv2d": "H, W", "Conv3d": "D, H, W"}


def _refuse(module: Any, layer: str, why: str, shape: str = "...") -> ConfigError:
    cls = type(module).__name__
    return ConfigError(
        f"cannot infer the inputs of {cls}: {why}. Pass them, e.g. "
        f"compress(model, example_inputs=torch.randn({shape})) or val=(X, y) "
        f"(first layer: {layer})"
    )


def synthetic_inputs(module: Any, seed: int = 0) -> tuple[Any, str]:
    """(example inputs, how they were made) for ``module``, or ConfigError naming the first
    layer and the argument to pass."""
    found = first_layer(module)
    if found is None:
        raise _refuse(module, "none", "it has no layers")
    name, layer = found
    kind = layer_kind(layer)
    described = f"{name} = {kind}"
    args = _required_args(module)
    rng = np.random.default_rng(seed)
    if kind == "Linear":
        if len(args) > 1:
            raise _refuse(module, described, f"forward takes {len(args)} inputs {args}")
        x = rng.standard_normal((ROWS, layer.in_features)).astype(np.float32)
        return x, f"float32 ({ROWS}, {layer.in_features}) from the first layer {described}"
    if kind == "Embedding":
        return _tokens(module, layer, args, described, rng)
    shape = "8, ..."
    if kind in _CONV_DIMS:
        shape = f"8, {layer.in_channels}, {_CONV_DIMS[kind]}"
    raise _refuse(module, described, f"a first {kind} layer does not say the input's shape", shape)


def _tokens(
    module: Any, layer: Any, args: list[str], described: str, rng: np.random.Generator
) -> tuple[Any, str]:
    vocab = int(layer.num_embeddings)
    low = 1 if vocab > 1 else 0  # id 0 is usually padding
    ids = rng.integers(low, vocab, size=(ROWS, SEQ)).astype(np.int64)
    masks = [a for a in args[1:] if "mask" in a.lower()]
    zeros = [a for a in args[1:] if "type_ids" in a.lower() or "segment" in a.lower()]
    unknown = [a for a in args[1:] if a not in masks and a not in zeros]
    if unknown:
        raise _refuse(module, described, f"forward also takes {unknown}")
    feeds: dict[str, np.ndarray] = {args[0] if args else "input_ids": ids}
    lengths = rng.integers(SEQ // 4, SEQ + 1, size=ROWS)
    lengths[0] = SEQ  # at least one full row
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    for a in masks:
        feeds[a] = mask
    if masks and layer.padding_idx is not None:
        ids[mask == 0] = layer.padding_idx
    for a in zeros:
        feeds[a] = np.zeros_like(ids)
    what = f"int64 token ids ({ROWS}, {SEQ}) below {vocab} from the first layer {described}"
    if masks:
        what += f", with {', '.join(masks)} (padded rows)"
    if len(feeds) == 1:
        return ids, what
    return feeds, what
