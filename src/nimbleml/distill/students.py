"""Smaller students built from a teacher: ``shrink(teacher, width=0.5, depth=0.5)``.

- **MLP** (a Sequential of Linear layers and element-wise layers): every hidden Linear keeps
  ``width`` of its neurons (those with the largest weight norm, and the matching inputs of the
  next layer); ``depth`` keeps that share of the hidden Linear layers: the first (it reads
  the input) and the others evenly spaced.
- **CNN** (a Sequential of Conv2d / BatchNorm2d / activations / pooling, then Flatten and
  Linear): every convolution but the last keeps ``width`` of its channels (largest norm), and
  ``depth`` drops shape-preserving convolutions (stride 1, same channels in and out, with their
  normalisation and activation) down to that share.
- **Residual CNN** (ResNet-style: stages that are Sequentials of blocks, each block holding
  its convolutions as ``conv1``, ``bn1``, ``conv2`` ... in order, a ``downsample`` where the
  shape changes): ``depth`` keeps that share of each stage's blocks, the first (it may
  downsample) and the others evenly spaced among those that keep the shape; ``width`` the
  inner channels of every block (all its convolutions' outputs but the last); the channels
  the skip connections add stay, so the stem, the downsamples and the head are copied.
- **Encoder** (a ``torch.nn.TransformerEncoder`` anywhere in the model, or a Hugging Face-style
  ``encoder.layer`` list): ``depth`` keeps every other layer (as DistilBERT was initialised:
  layers 0, 2, 4 ...), ``width`` the feed-forward's inner neurons; the hidden size, the
  embeddings and the heads stay, so everything else is copied as it is.

The student starts from the teacher's weights where the shapes allow it (the kept neurons,
channels and layers), which trains faster than a random start. The teacher is not changed.

The student carries the pairs of modules whose outputs distillation matches by default
(``features="auto"``), as ``student.nimbleml_feature_pairs`` [(student_name, teacher_name)]:
each kept hidden layer's output for an MLP, each stage's output (what reaches a pooling layer
or the head; a ResNet's stages) for a CNN, each kept layer's for an encoder.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from .._deps import require
from ..errors import ConfigError, UnsupportedError
from .features import PAIRS_ATTR

__all__ = ["shrink"]


def shrink(teacher: Any, width: float = 0.5, depth: float = 0.5) -> Any:
    """A copy of ``teacher`` with ``width`` of its hidden units and ``depth`` of its layers,
    initialised from the teacher's weights where shapes allow (see the module's docstring)."""
    torch = require("torch", "nimbleml.students")
    for name, value in (("width", width), ("depth", depth)):
        if not isinstance(value, int | float) or not 0 < value <= 1:
            raise ConfigError(f"{name} must be a share in (0, 1], got {value!r}")
    if not isinstance(teacher, torch.nn.Module):
        raise ConfigError(f"shrink takes a torch.nn.Module, got {type(teacher).__name__}")
    student = copy.deepcopy(teacher)
    built = None
    with torch.no_grad():
        if _encoder_layers(student) is not None:
            built = _encoder(student, width, depth)
        elif isinstance(student, torch.nn.Sequential) and any(
            isinstance(m, torch.nn.Conv2d) for m in student
        ):
            built = _cnn(student, width, depth)
        elif isinstance(student, torch.nn.Sequential) and any(
            isinstance(m, torch.nn.Linear) for m in student
        ):
            built = _mlp(student, width, depth)
        elif _stages(student):
            names = {id(m): n for n, m in student.named_modules()}
            pairs = [(names[id(st)], names[id(st)]) for st in _stages(student)]
            built = (_residual(student, width, depth), pairs)
    if built is not None:
        model, pairs = built
        setattr(model, PAIRS_ATTR, pairs)
        return model
    raise UnsupportedError(
        f"shrink builds students of MLPs and CNNs written as torch.nn.Sequential, of "
        f"ResNet-style CNNs and of Transformer encoders; {type(teacher).__name__} is none of "
        "them: write the student yourself and give it to nimbleml.distill"
    )


def _keep(n: int, share: float) -> int:
    return max(1, math.ceil(n * share))


def _spaced(n: int, keep: int) -> list[int]:
    """``keep`` of ``n`` indices, evenly spaced, the first and the last among them."""
    if keep >= n:
        return list(range(n))
    if keep <= 0:
        return []
    if keep == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (keep - 1)) for i in range(keep)})


def _strongest(weight: Any, keep: int) -> Any:
    """Indices of the ``keep`` output units (rows) with the largest weight norm, in order."""
    norms = weight.reshape(weight.shape[0], -1).norm(dim=1)
    return norms.topk(keep).indices.sort().values


# -- MLP -----------------------------------------------------------------------------------
def _mlp(model: Any, width: float, depth: float) -> Any:
    torch = require("torch", "nimbleml.students")
    layers = list(model)
    linear = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Linear)]
    hidden = linear[:-1]  # the first (it reads the input) is always kept
    middle = hidden[1:]
    kept_hidden = [hidden[0]] + [
        middle[i] for i in _spaced(len(middle), _keep(len(hidden), depth) - 1)
    ]
    # drop a hidden Linear with what follows it up to the next Linear (its activation, ...)
    dropped: set[int] = set()
    for i in set(hidden) - set(kept_hidden):
        nxt = next(j for j in linear if j > i)
        dropped.update(range(i, nxt))
    kept = [i for i in range(len(layers)) if i not in dropped]
    pairs = []  # each kept hidden layer's output (the module before the next Linear)
    for i in kept_hidden:
        end = next(j for j in linear if j > i) - 1
        pairs.append((str(kept.index(end)), str(end)))
    layers = [layers[i] for i in kept]
    output = layers[_last(layers, torch.nn.Linear)]
    chosen = None  # the input units the current layer reads (the previous layer's kept rows)
    for m in layers:
        if isinstance(m, torch.nn.Linear):
            rows = None if m is output else _strongest(m.weight, _keep(m.out_features, width))
            _slice(m, chosen, rows)
            chosen = rows
        elif chosen is not None:
            _slice_norm(m, chosen)
    return torch.nn.Sequential(*layers), pairs


def _last(layers: list[Any], kind: type) -> int:
    return max(i for i, m in enumerate(layers) if isinstance(m, kind))


def _slice(m: Any, inputs: Any, outputs: Any) -> None:
    """Keep the output units / channels ``outputs`` and the inputs ``inputs`` (None: all) of a
    Linear or Conv2d (weights shaped [out, in, ...]), bias along with them."""
    torch = require("torch", "nimbleml.students")
    w = m.weight.data
    if inputs is not None:
        if int(inputs.max()) >= w.shape[1]:  # a dropped layer of another width in between:
            norms = w.reshape(w.shape[0], w.shape[1], -1).norm(dim=(0, 2))
            inputs = norms.topk(min(len(inputs), w.shape[1])).indices
            inputs = inputs.sort().values
        w = w[:, inputs]
    if outputs is not None:
        w = w[outputs]
    m.weight = torch.nn.Parameter(w.clone())
    if m.bias is not None and outputs is not None:
        m.bias = torch.nn.Parameter(m.bias.data[outputs].clone())
    if isinstance(m, torch.nn.Linear):
        m.out_features, m.in_features = w.shape
    else:
        m.out_channels, m.in_channels = w.shape[0], w.shape[1]


def _slice_norm(m: Any, index: Any) -> None:
    """A BatchNorm / LayerNorm over the units just sliced keeps the same units."""
    torch = require("torch", "nimbleml.students")
    if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
        for name in ("weight", "bias"):
            if getattr(m, name) is not None:
                setattr(m, name, torch.nn.Parameter(getattr(m, name).data[index].clone()))
        m.running_mean = m.running_mean[index].clone()
        m.running_var = m.running_var[index].clone()
        m.num_features = len(index)
    elif isinstance(m, torch.nn.LayerNorm):
        if m.weight is not None:
            m.weight = torch.nn.Parameter(m.weight.data[index].clone())
            m.bias = torch.nn.Parameter(m.bias.data[index].clone())
        m.normalized_shape = (len(index),)


# -- CNN -----------------------------------------------------------------------------------
def _cnn(model: Any, width: float, depth: float) -> Any:
    torch = require("torch", "nimbleml.students")
    nn = torch.nn
    layers = list(model)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    flat_channels = layers[convs[-1]].out_channels  # what the teacher's Flatten saw
    same = [i for i in convs[1:] if _preserves(layers[i])]
    drop_n = len(same) - _keep(len(same), depth) if same else 0
    dropped: set[int] = set()
    ends = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
            nn.Flatten, nn.Linear)  # fmt: skip
    for i in [same[j] for j in _spaced(len(same), drop_n)] if drop_n else []:
        dropped.update(range(i, _first(layers, i, ends)))  # the convolution, its norm and
        # activation: not a pooling after it (it changes the shape the rest was built for)
    kept = [i for i in range(len(layers)) if i not in dropped]
    stage_ends = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                  nn.Flatten)  # fmt: skip
    pairs = [
        (str(kept.index(j) - 1), str(j - 1)) for j in kept[1:] if isinstance(layers[j], stage_ends)
    ]  # each stage's output: what reaches a pool
    pairs = list(dict.fromkeys(pairs))
    layers = [layers[i] for i in kept]
    chosen = None  # the channels the current layer reads (the previous convolution's kept)
    for m in layers:
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise UnsupportedError("shrink does not slice grouped or depthwise convolutions")
            rows = _strongest(m.weight, _keep(m.out_channels, width))
            _slice(m, chosen, rows)
            chosen = rows
        elif isinstance(m, nn.Linear) and chosen is not None:
            # after Flatten: each channel is a run of in_features / channels columns
            spatial = m.in_features // flat_channels
            cols = (chosen[:, None] * spatial + torch.arange(spatial)[None]).reshape(-1)
            _slice(m, cols, None)
            chosen = None
        elif chosen is not None:
            _slice_norm(m, chosen)
    return nn.Sequential(*layers), pairs


def _preserves(conv: Any) -> bool:
    return (
        conv.in_channels == conv.out_channels
        and tuple(conv.stride) == (1, 1)
        and conv.padding != "valid"
        and all(2 * p == (k - 1) * d for p, k, d in zip(
            _pair(conv.padding), conv.kernel_size, conv.dilation, strict=True))
    )  # fmt: skip


def _pair(p: Any) -> tuple[int, int]:
    if p == "same":
        return (-1, -1)
    return tuple(p) if isinstance(p, tuple | list) else (p, p)


def _first(layers: list[Any], after: int, kinds: tuple[type, ...]) -> int:
    return next((j for j in range(after + 1, len(layers)) if isinstance(layers[j], kinds)),
                len(layers))  # fmt: skip


# -- residual CNNs -------------------------------------------------------------------------
def _block_convs(block: Any) -> list[tuple[Any, Any]]:
    """A residual block's own (conv, its BatchNorm or None) pairs in order (conv1/bn1,
    conv2/bn2, ...); [] when the block is not of that form."""
    torch = require("torch", "nimbleml.students")
    pairs = []
    for i in range(1, 10):
        conv = getattr(block, f"conv{i}", None)
        if conv is None:
            break
        if not isinstance(conv, torch.nn.Conv2d):
            return []
        bn = getattr(block, f"bn{i}", None)
        pairs.append((conv, bn if isinstance(bn, torch.nn.BatchNorm2d) else None))
    return pairs if len(pairs) >= 2 else []


def _stages(model: Any) -> list[Any]:
    """The Sequentials whose children are all residual blocks."""
    torch = require("torch", "nimbleml.students")
    return [m for m in model.modules() if isinstance(m, torch.nn.Sequential) and len(m) > 0
            and all(_block_convs(b) for b in m)]  # fmt: skip


def _keeps_shape(block: Any) -> bool:
    convs = [c for c, _ in _block_convs(block)]
    return (getattr(block, "downsample", None) is None
            and convs[0].in_channels == convs[-1].out_channels
            and all(tuple(c.stride) == (1, 1) for c in convs))  # fmt: skip


def _residual(model: Any, width: float, depth: float) -> Any:  # the stages stay as named
    for stage in _stages(model):
        blocks = list(stage)
        droppable = [i for i in range(1, len(blocks)) if _keeps_shape(blocks[i])]
        fixed = len(blocks) - len(droppable)  # the first, and any that change the shape
        picked = _spaced(len(droppable), max(0, _keep(len(blocks), depth) - fixed))
        dropped = set(droppable) - {droppable[j] for j in picked}
        kept = [b for i, b in enumerate(blocks) if i not in dropped]
        for name in list(stage._modules):
            del stage._modules[name]
        for i, b in enumerate(kept):
            stage.add_module(str(i), b)
        if width < 1:
            for block in kept:
                pairs = _block_convs(block)
                if any(c.groups != 1 for c, _ in pairs):
                    raise UnsupportedError(
                        "shrink does not slice grouped or depthwise convolutions; give width=1.0"
                    )
                chosen = None
                for conv, bn in pairs[:-1]:
                    rows = _strongest(conv.weight, _keep(conv.out_channels, width))
                    _slice(conv, chosen, rows)
                    if bn is not None:
                        _slice_norm(bn, rows)
                    chosen = rows
                _slice(pairs[-1][0], chosen, None)
    return model


# -- encoders ------------------------------------------------------------------------------
def _encoder_layers(model: Any) -> tuple[Any, str] | None:
    """(the module holding the layer list, the list's attribute name), or None."""
    torch = require("torch", "nimbleml.students")
    for m in model.modules():
        if isinstance(m, torch.nn.TransformerEncoder):
            return m, "layers"
        layer = getattr(m, "layer", None)
        if isinstance(layer, torch.nn.ModuleList) and type(m).__name__.endswith("Encoder"):
            return m, "layer"
    return None


def _encoder(model: Any, width: float, depth: float) -> Any:
    torch = require("torch", "nimbleml.students")
    found = _encoder_layers(model)
    assert found is not None
    holder, attr = found
    layers = getattr(holder, attr)
    n = len(layers)
    keep = _keep(n, depth)
    step = max(1, n // keep)
    index = list(range(0, n, step))[:keep]  # 0, 2, 4 ... for a half
    prefix = next(name for name, m in model.named_modules() if m is holder)
    prefix = f"{prefix}.{attr}" if prefix else attr
    pairs = [(f"{prefix}.{k}", f"{prefix}.{i}") for k, i in enumerate(index)]
    setattr(holder, attr, torch.nn.ModuleList([layers[i] for i in index]))
    if hasattr(holder, "num_layers"):
        holder.num_layers = len(index)
    if width < 1:
        for layer in getattr(holder, attr):
            first, second = _feed_forward(layer)
            rows = _strongest(first.weight, _keep(first.out_features, width))
            _slice(first, None, rows)
            _slice(second, rows, None)
    return model, pairs


def _feed_forward(layer: Any) -> tuple[Any, Any]:
    """The feed-forward's two Linear layers: torch's linear1/linear2, or Hugging Face's
    intermediate.dense / output.dense."""
    if hasattr(layer, "linear1") and hasattr(layer, "linear2"):
        return layer.linear1, layer.linear2
    inter, out = getattr(layer, "intermediate", None), getattr(layer, "output", None)
    if inter is not None and out is not None and hasattr(inter, "dense"):
        return inter.dense, out.dense
    raise UnsupportedError(
        f"shrink cannot find the feed-forward of {type(layer).__name__} (linear1/linear2 or "
        "intermediate.dense/output.dense); give width=1.0 to keep it"
    )
