"""Where structured pruning can cut: layer chains in a torch.fx graph, and the cut itself.

A *chain* is a producer (Linear, Conv1d, Conv2d) whose output channels can be removed because
every op between it and its consumer keeps channels apart:

- elementwise activations (modules, ``F.relu`` / ``torch.relu`` / ``x.relu()`` and kin),
  Dropout and Identity: a removed channel was only ever a channel;
- pooling after a convolution (MaxPool / AvgPool / AdaptiveAvgPool / AdaptiveMaxPool 1d/2d,
  modules or ``F.`` forms): it works per channel;
- BatchNorm1d/2d: its per-channel weight, bias, running_mean and running_var are cut with the
  producer's channels;
- Flatten (``nn.Flatten()``, ``torch.flatten(x, 1)``, ``x.flatten(1)``) from the last
  convolution to a Linear: channel ``c`` covers the Linear's columns ``c*H*W .. (c+1)*H*W-1``,
  H*W taken from a shape propagation of the example input (or, without one, from the Linear's
  width divided by the channels, which Flatten(1) of a batched input makes exact).

The consumer is a layer of the producer's kind (its input channels are cut) or, after Flatten,
a Linear. A value with several users stops a chain: a residual add, a concatenation, a second
head or the model's output need all of its channels, so those channels are kept. So do
reshape/view (their meaning depends on the shape), grouped convolutions and layers called
more than once (shared weights).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._deps import require

_ELEMENTWISE_MODULES = (
    "ReLU", "ReLU6", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "SELU", "CELU",
    "Hardswish", "Hardsigmoid", "Hardtanh", "Mish", "Softplus", "Identity",
    "Dropout", "Dropout1d", "Dropout2d", "AlphaDropout",
)  # fmt: skip
_ELEMENTWISE_CALLS = (
    "relu", "relu_", "relu6", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "selu",
    "celu", "hardswish", "hardsigmoid", "hardtanh", "mish", "softplus", "dropout", "dropout1d",
    "dropout2d", "alpha_dropout", "contiguous",
)  # fmt: skip
_POOLS = tuple(
    f"{kind}{d}d" for kind in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool")
    for d in (1, 2)
)  # fmt: skip
_POOL_MODULES = tuple(
    f"{kind}{d}d" for kind in ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool")
    for d in (1, 2)
)  # fmt: skip


@dataclass
class Chain:
    """Cut ``producer``'s output channels, the ``norms``' channels, and ``consumer``'s input
    channels (each one ``spatial`` columns wide after a Flatten)."""

    producer: str
    consumer: str
    width: int
    norms: list[str] = field(default_factory=list)
    spatial: int = 0  # 0: the consumer is of the producer's kind; else H*W columns per channel


def trace(module: Any) -> tuple[Any, str | None]:
    """(GraphModule, None), or (None, "not fx-traceable: <the error's first line>")."""
    torch = require("torch", "structured pruning")
    try:
        return torch.fx.symbolic_trace(module), None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"not fx-traceable: {first[:200]}"


def _args(gm: Any, feeds: Any, rows: int) -> list[Any] | None:
    """The graph's positional inputs from ``rows`` rows of ``feeds`` (matched by placeholder
    name where the names fit, else in order), float64 cast to the weights' type."""
    torch = require("torch", "structured pruning")
    if not feeds:
        return None
    dtype = next((p.dtype for p in gm.parameters() if p.is_floating_point()), torch.float32)
    tensors = {}
    for name, arr in feeds.items():
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(arr)[:rows]))
        tensors[name] = t.to(dtype) if t.is_floating_point() else t
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not set(tensors) <= {n.target for n in holders}:
        return list(tensors.values())
    args = []
    for node in holders[: 1 + max(i for i, n in enumerate(holders) if n.target in tensors)]:
        if node.target not in tensors and not node.args:
            return None
        args.append(tensors[node.target] if node.target in tensors else node.args[0])
    return args


@contextlib.contextmanager
def _evaluating(gm: Any) -> Iterator[None]:
    """Eval mode (BatchNorm's running statistics stay as they are), no autograd, and every
    module's training flag restored afterwards."""
    torch = require("torch", "structured pruning")
    modes = {m: m.training for m in gm.modules()}
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def propagate(gm: Any, feeds: Any) -> dict[str, tuple[int, ...]] | None:
    """Each node's output shape on two rows of ``feeds`` (torch.fx ShapeProp), or None when
    the feeds do not fit the graph's placeholders."""
    from torch.fx.passes.shape_prop import ShapeProp

    args = _args(gm, feeds, 2)
    if args is None:
        return None
    with _evaluating(gm), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints
        try:  # a traceback before it raises
            ShapeProp(gm.eval()).propagate(*args)
        except Exception:
            return None
    return {
        n.name: tuple(n.meta["tensor_meta"].shape)
        for n in gm.graph.nodes
        if hasattr(n.meta.get("tensor_meta"), "shape")
    }


def input_means(gm: Any, chains: list[Chain], feeds: Any) -> dict[str, Any]:
    """Each consumer's mean input per input channel (Linear: per column) over the example
    rows, for the bias compensation of ``cut``; empty when the feeds do not fit."""
    torch = require("torch", "structured pruning")
    means: dict[str, Any] = {}

    def record(name: str, linear: bool) -> Any:
        def hook(layer: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0].detach().float()
            if linear or x.dim() == layer.weight.dim():  # a batched convolution input
                keep = x.dim() - 1 if linear else 1
                means[name] = x.mean(dim=[d for d in range(x.dim()) if d != keep])

        return hook

    args = _args(gm, feeds, 16)
    if args is None:
        return means
    hooks = []
    for c in chains:
        linear = type(gm.get_submodule(c.consumer)) is torch.nn.Linear
        hooks.append(
            gm.get_submodule(c.consumer).register_forward_pre_hook(record(c.consumer, linear))
        )
    with _evaluating(gm):
        try:
            gm.eval()(*args)
        except Exception:
            means.clear()
        finally:
            for h in hooks:
                h.remove()
    return means


def _call_name(node: Any) -> str:
    if node.op == "call_method":
        return str(node.target)
    return str(getattr(node.target, "__name__", node.target))


def _flattens(node: Any, mod: Any) -> bool:
    """Flatten from dim 1 to the end: nn.Flatten(), torch.flatten(x, 1), x.flatten(1)."""
    if mod is not None:
        torch = require("torch", "structured pruning")
        return type(mod) is torch.nn.Flatten and (mod.start_dim, mod.end_dim) == (1, -1)
    if _call_name(node) != "flatten":
        return False
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return bool(start == 1 and end == -1)


def _stop(node: Any, modules: dict[str, Any]) -> str:
    if node.op == "output":
        return "is the model's output"
    if node.op == "call_module":
        return f"reaches {type(modules[node.target]).__name__} '{node.target}'"
    return f"reaches {_call_name(node)}"


class _Walker:
    """Follows one producer's output to a consumer, or says where and why it stops."""

    def __init__(self, gm: Any, shapes: dict[str, tuple[int, ...]] | None) -> None:
        self.torch = require("torch", "structured pruning")
        self.modules = dict(gm.named_modules())
        self.shapes = shapes
        self.calls: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
        seen = Counter(id(p) for _, p in gm.named_parameters(remove_duplicate=False))
        self.tied = {key for key, count in seen.items() if count > 1}

    def producers(self, gm: Any) -> list[Any]:
        nn = self.torch.nn
        kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
        return [
            n for n in gm.graph.nodes
            if n.op == "call_module" and type(self.modules[n.target]) in kinds
        ]  # fmt: skip

    def rank_ok(self, node: Any, rank: int) -> bool:
        """The value's rank is ``rank`` (unknown without shapes: assumed)."""
        shape = None if self.shapes is None else self.shapes.get(node.name)
        return shape is None or len(shape) == rank

    def usable(self, target: str, mod: Any) -> str | None:
        if self.calls.get(target, 0) > 1:
            return f"'{target}' is called {self.calls[target]} times (shared weights)"
        if getattr(mod, "groups", 1) != 1:
            return f"'{target}' is a grouped convolution"
        if any(id(p) in self.tied for p in mod.parameters(recurse=False)):
            return f"'{target}' shares a weight with another layer"
        return None

    def walk(self, node: Any) -> Chain | str:
        """The chain from producer ``node`` to its consumer, or the reason there is none."""
        nn = self.torch.nn
        prod = self.modules[node.target]
        kind = type(prod)
        chain = Chain(node.target, "", int(prod.weight.shape[0]))
        rank = {nn.Linear: 2, nn.Conv1d: 3, nn.Conv2d: 4}[kind]
        if why := self.usable(node.target, prod):
            return why
        if kind is not nn.Linear and not self.rank_ok(node, rank):
            return f"'{node.target}' runs on an unbatched input"
        flat: Any = None  # the value that entered Flatten, once passed
        cur = node
        while True:
            if len(cur.users) != 1:
                return (
                    f"'{node.target}' output is used {len(cur.users)} times (a residual, "
                    "a concatenation or a second head keeps its channels)"
                )
            nxt = next(iter(cur.users))
            if not nxt.args or nxt.args[0] is not cur:
                return f"'{node.target}' output {_stop(nxt, self.modules)}"
            mod = self.modules.get(nxt.target) if nxt.op == "call_module" else None
            if type(mod) is (kind if flat is None else nn.Linear):
                return self.close(chain, nxt, mod, flat)
            step = self.step(chain, rank, cur, nxt, mod, flat)
            if step not in ("pass", "flatten"):
                return step
            if step == "flatten":
                flat = cur
            cur = nxt

    def step(self, chain: Chain, rank: int, cur: Any, nxt: Any, mod: Any, flat: Any) -> str:
        """What ``nxt`` does: "pass" (it keeps channels apart; a BatchNorm joins the chain),
        "flatten", or the reason the chain stops there."""
        name = type(mod).__name__ if mod is not None else _call_name(nxt)
        conv = rank > 2
        if name in _ELEMENTWISE_MODULES or (mod is None and name in _ELEMENTWISE_CALLS):
            return "pass"
        if conv and flat is None and (name in _POOL_MODULES or name in _POOLS):
            return "pass"
        if flat is None and name in ("BatchNorm1d", "BatchNorm2d"):
            norm_rank = 4 if name == "BatchNorm2d" else (3 if conv else 2)
            if norm_rank != rank or mod.num_features != chain.width or not self.rank_ok(cur, rank):
                return f"'{chain.producer}' output reaches {name} '{nxt.target}' of another shape"
            if why := self.usable(nxt.target, mod):
                return why
            chain.norms.append(nxt.target)
            return "pass"
        if conv and flat is None and _flattens(nxt, mod):
            return "flatten"
        return f"'{chain.producer}' output {_stop(nxt, self.modules)}"

    def close(self, chain: Chain, node: Any, mod: Any, flat: Any) -> Chain | str:
        """The chain ending in ``node``, when its input fits the producer's width."""
        if why := self.usable(node.target, mod):
            return why
        chain.consumer = node.target
        if flat is None and int(mod.weight.shape[1]) == chain.width:
            return chain
        if flat is not None and (spatial := self.spatial(flat, mod, chain.width)):
            chain.spatial = spatial
            return chain
        return f"'{chain.producer}' output does not fit the input of '{node.target}'"

    def spatial(self, flat_input: Any, linear: Any, width: int) -> int:
        """Columns per channel after Flatten (0 when the Linear does not fit)."""
        shape = None if self.shapes is None else self.shapes.get(flat_input.name)
        if shape is not None:
            per = math.prod(shape[2:])
            ok = shape[1] == width and linear.in_features == width * per
            return per if ok else 0
        per, rest = divmod(int(linear.in_features), width)
        return per if rest == 0 else 0


def find_chains(gm: Any, shapes: dict[str, tuple[int, ...]] | None) -> tuple[list[Chain], str]:
    """The chains of ``gm``, and (when there are none) the one-line reason."""
    walker = _Walker(gm, shapes)
    producers = walker.producers(gm)
    if not producers:
        return [], (
            "no prunable layer pair: torch.fx sees no Linear, Conv1d or Conv2d call (layers "
            "inside torch.nn blocks such as TransformerEncoder stay whole)"
        )
    chains, stops = [], []
    for node in producers:
        found = walker.walk(node)
        if isinstance(found, Chain):
            chains.append(found)
        elif found not in stops:
            stops.append(found)
    more = f"; {len(stops) - 2} more" if len(stops) > 2 else ""  # one line, however many
    return chains, (
        f"no prunable layer pair among {len(producers)} Linear/Conv layers: "
        f"{'; '.join(stops[:2])}{more}"
    )


def needs_shapes(gm: Any, chains: list[Chain]) -> bool:
    """Whether shapes could overturn a chain: convolutions, BatchNorm and Flatten rely on
    the value's rank; a plain Linear→Linear chain never does."""
    torch = require("torch", "structured pruning")
    return any(
        c.norms or c.spatial or type(gm.get_submodule(c.producer)) is not torch.nn.Linear
        for c in chains
    )


def importance(gm: Any, chain: Chain) -> Any:
    """One score per output channel: the L2 norm of the producer's filter as it is once each
    BatchNorm of the chain is folded into it (w·|γ|/√(running_var+ε))."""
    torch = require("torch", "structured pruning")
    weight = gm.get_submodule(chain.producer).weight.detach()
    score = weight.reshape(chain.width, -1).float().norm(dim=1)
    for name in chain.norms:
        bn = gm.get_submodule(name)
        if bn.weight is not None:
            score = score * bn.weight.detach().float().abs()
        if bn.running_var is not None:
            score = score / torch.sqrt(bn.running_var.float() + bn.eps)
    return score


def cut(module: Any, index: Any, dim: int, mean: Any = None) -> None:
    """Keep ``index`` along dim 0 (outputs; BatchNorm channels) or 1 (inputs), in place. With
    ``mean`` (the input's mean per input channel), what the removed inputs added on average
    moves into the bias."""
    torch = require("torch", "structured pruning")
    with torch.no_grad():
        if dim == 0:
            for name in ("weight", "bias"):
                old = getattr(module, name, None)
                if old is not None:
                    new = old.detach().index_select(0, index).clone()
                    setattr(module, name, torch.nn.Parameter(new, old.requires_grad))
            for name in ("running_mean", "running_var"):
                if getattr(module, name, None) is not None:
                    setattr(module, name, getattr(module, name).index_select(0, index).clone())
        else:
            old = module.weight
            if mean is not None:
                _compensate(module, index, mean)
            new = old.detach().index_select(1, index).clone()
            module.weight = torch.nn.Parameter(new, old.requires_grad)
    size = len(index)
    attrs = {torch.nn.Linear: ("out_features", "in_features")}.get(
        type(module), ("out_channels", "in_channels")
    )
    if hasattr(module, "num_features"):
        module.num_features = size
    elif hasattr(module, attrs[dim]):
        setattr(module, attrs[dim], size)


def _compensate(module: Any, keep: Any, mean: Any) -> None:
    """bias += W[:, removed] · mean[removed] (a convolution's kernel summed): exact for a
    Linear and for a convolution away from its zero-padded border."""
    torch = require("torch", "structured pruning")
    if mean.shape != (module.weight.shape[1],):
        return
    gone = torch.ones(module.weight.shape[1], dtype=torch.bool)
    gone[keep] = False
    if not bool(gone.any()):
        return
    w = module.weight.detach()[:, gone].float()
    w = w.reshape(w.shape[0], w.shape[1], -1).sum(dim=2)
    shift = (w @ mean.to(w.device)[gone]).to(module.weight.dtype)
    if module.bias is None:
        module.bias = torch.nn.Parameter(torch.zeros_like(shift), module.weight.requires_grad)
    module.bias.add_(shift)
