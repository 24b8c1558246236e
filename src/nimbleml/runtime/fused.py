"""FusedEnsemble: ONNX members that take the same inputs, merged into one ONNX graph.

Each member's names get a prefix (``m0_``, ``m1_``, …; ``onnx.compose.add_prefix``), the
graph inputs are shared, and the graph's outputs are each member's scores (its
``probabilities`` output when it has one, else its first float output, as
``EnsemblePredictor`` fuses) and, for ``mean`` / ``weighted``, optionally the fused scores
computed in the graph (``Mean``, or ``Mul`` + ``Sum``). One ONNX Runtime session runs it all:
one call instead of one per member, so the per-call cost (feeds, session entry, output
copies: about 10 µs each here) is paid once; for three digits classifiers at batch 1 the
fused call measured 2-3x faster than calling the members one after another.

Members made by different exporters declare different opsets (torch: ai.onnx 17; skl2onnx:
ai.onnx 22 and ai.onnx.ml 1). One model has one version per domain, so the merged graph takes
the highest version each domain is used at; a member whose operators changed between its
version and that one is converted with ``onnx.version_converter`` (ai.onnx only; a change
elsewhere is refused with the operator named). The merged graph is checked against the
members' own outputs on random inputs before it is used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ConversionError
from ..inputs import Feeds, TensorSpec
from ..models.onnx_model import OnnxModel, default_providers, session_options

FUSED_OUTPUT = "fused_scores"
IN_GRAPH = ("mean", "weighted")


def _prefix(i: int) -> str:
    return f"m{i}_"


def score_index(outputs: Sequence[TensorSpec]) -> int:
    """Which output is fused: 'probabilities' when there is one, else the first float."""
    names = [o.name for o in outputs]
    if "probabilities" in names:
        return names.index("probabilities")
    for i, o in enumerate(outputs):
        if o.dtype.startswith(("float", "bfloat")):
            return i
    return 0


def probe_feeds(specs: Sequence[TensorSpec], rows: int = 2, seed: int = 0) -> Feeds:
    """Random inputs for a check: normal floats, zero ids, masks of ones; symbolic dims 8."""
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for s in specs:
        shape = [rows if i == 0 else (d if isinstance(d, int) and d > 0 else 8)
                 for i, d in enumerate(s.shape)]  # fmt: skip
        if s.dtype.startswith("float") or s.dtype == "bfloat16":
            dtype = "float32" if s.dtype == "bfloat16" else s.dtype
            feeds[s.name] = rng.standard_normal(shape).astype(dtype)
        elif s.dtype == "object":
            feeds[s.name] = np.full(shape, "a", dtype=object)
        else:
            fill = 1 if "mask" in s.name.lower() else 0
            feeds[s.name] = np.full(shape, fill, dtype=s.dtype)
    return feeds


def shared_inputs(models: Sequence[Any]) -> list[TensorSpec]:
    """The inputs every member takes (same names, dtypes, compatible shapes), or ConfigError
    naming the first mismatch. A fixed dim beats a symbolic one in the result."""
    for i, m in enumerate(models):
        if not isinstance(m, OnnxModel):
            raise ConfigError(
                f"member {i} is a {getattr(m, 'framework', type(m).__name__)} model; a fused "
                "ensemble needs ONNX members (ONNX files, or packages whose model is ONNX)"
            )
    first = {s.name: s for s in models[0].inputs}
    merged = dict(first)
    for i, m in enumerate(models[1:], start=1):
        specs = {s.name: s for s in m.inputs}
        if set(specs) != set(first):
            raise ConfigError(
                f"members 0 and {i} take different inputs ({sorted(first)} vs {sorted(specs)}); "
                "a fused ensemble needs members with the same input names"
            )
        for name, s in specs.items():
            a = merged[name]
            if s.dtype != a.dtype:
                raise ConfigError(
                    f"input '{name}': member 0 takes {a.dtype}, member {i} takes {s.dtype}"
                )
            if len(s.shape) != len(a.shape) or any(
                isinstance(x, int) and isinstance(y, int) and x != y
                for x, y in zip(s.shape, a.shape, strict=False)
            ):
                raise ConfigError(
                    f"input '{name}': member 0 takes shape {list(a.shape)}, member {i} takes "
                    f"{list(s.shape)}"
                )
            dims = tuple(
                x if isinstance(x, int) else y for x, y in zip(s.shape, a.shape, strict=True)
            )
            merged[name] = TensorSpec(name, a.dtype, dims)
    return [merged[s.name] for s in models[0].inputs]


# -- opsets ----------------------------------------------------------------------------------
def _domain(d: str) -> str:
    return "" if d == "ai.onnx" else d


def _opsets(proto: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in proto.opset_import:  # some exporters list a domain twice
        d = _domain(o.domain)
        out[d] = max(out.get(d, 0), int(o.version))
    return out


def _graphs(graph: Any) -> list[Any]:
    """The graph and every subgraph in it (If / Loop / Scan bodies)."""
    found = [graph]
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("g"):
                found += _graphs(a.g)
            for g in a.graphs:
                found += _graphs(g)
    return found


def _ops(proto: Any) -> dict[str, set[str]]:
    """{domain: operator types} used by the model's graphs (not by its local functions)."""
    local = {f.domain for f in proto.functions}
    used: dict[str, set[str]] = {}
    for g in _graphs(proto.graph):
        for n in g.node:
            d = _domain(n.domain)
            if d not in local:
                used.setdefault(d, set()).add(n.op_type)
    return used


def _changed(op: str, domain: str, old: int, new: int) -> bool:
    """True when ``op`` means something else at opset ``new`` than at ``old`` (known ops)."""
    import onnx.defs

    if not onnx.defs.has(op, domain):
        return False  # e.g. com.microsoft operators: ONNX Runtime's own, one version each
    try:
        a = onnx.defs.get_schema(op, old, domain)
        b = onnx.defs.get_schema(op, new, domain)
    except onnx.defs.SchemaError:
        return True
    return a.since_version != b.since_version or b.deprecated


def align_opsets(protos: list[Any]) -> tuple[list[Any], dict[str, int]]:
    """Members at one version per domain: the highest each domain is used at."""
    from onnx import version_converter

    used = [_ops(p) for p in protos]
    declared = [_opsets(p) for p in protos]
    target: dict[str, int] = {}
    for d in {d for opsets in declared for d in opsets}:
        users = [o[d] for o, ops in zip(declared, used, strict=True) if d in o and d in ops]
        target[d] = max(users or [o[d] for o in declared if d in o])
    out = []
    for i, (proto, ops, opsets) in enumerate(zip(protos, used, declared, strict=True)):
        for d, names in sorted(ops.items()):
            old, new = opsets.get(d, 1), target[d]
            stale = sorted(op for op in names if old != new and _changed(op, d, old, new))
            if not stale:
                continue
            if d != "":
                raise ConfigError(
                    f"member {i} uses {d} opset {old}, whose {', '.join(stale)} changed by opset "
                    f"{new} (another member's); export the members with the same {d} opset"
                )
            try:
                proto = version_converter.convert_version(proto, new)
            except Exception as exc:
                raise ConfigError(
                    f"member {i} is at ai.onnx opset {old} and another member at {new}; "
                    f"converting it failed ({str(exc).splitlines()[0][:200]}); export the "
                    "members with the same opset"
                ) from exc
        out.append(proto)
    return out, target


# -- merging ---------------------------------------------------------------------------------
def _reads(node: Any) -> set[str]:
    """The names a node reads, with those its subgraphs take from the outer scope."""
    names = set(node.input)
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for sub in _graphs(g):
                for n in sub.node:
                    names.update(n.input)
    return names


def _needed(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """The nodes the given outputs depend on (graph nodes are in topological order)."""
    need, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in need for o in node.output):
            keep.append(node)
            need |= _reads(node)
    return keep[::-1]


def _fusion_nodes(
    outputs: list[Any], fusion: str, weights: Sequence[float] | None
) -> tuple[list[Any], list[Any], Any]:
    """Nodes and initializers computing ``fused_scores`` (float32) from the members' outputs:
    Mean for 'mean'; Mul by the normalised weights and Sum for 'weighted'."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, scores = [], [], []
    for o in outputs:  # fused in float32, whatever the members give
        if o.type.tensor_type.elem_type == TensorProto.FLOAT:
            scores.append(o.name)
        else:
            nodes.append(helper.make_node("Cast", [o.name], [o.name + "_f"], to=TensorProto.FLOAT))
            scores.append(o.name + "_f")
    if fusion == "weighted":
        w = np.asarray(weights if weights is not None else [], dtype=np.float64)
        if len(w) != len(outputs) or np.any(w < 0) or w.sum() <= 0:
            raise ConfigError(
                f"fusion='weighted' needs one weight >= 0 per member ({len(outputs)}) with a "
                f"positive sum, got {None if weights is None else list(weights)}"
            )
        w = w / w.sum()
        for i, name in enumerate(scores):
            inits.append(numpy_helper.from_array(np.array(w[i], np.float32), f"fused_w{i}"))
            nodes.append(helper.make_node("Mul", [name, f"fused_w{i}"], [f"fused_wx{i}"]))
        terms = [f"fused_wx{i}" for i in range(len(scores))]
        nodes.append(helper.make_node("Sum", terms, [FUSED_OUTPUT]))
    else:
        nodes.append(helper.make_node("Mean", scores, [FUSED_OUTPUT]))
    fused = helper.make_tensor_value_info(FUSED_OUTPUT, TensorProto.FLOAT, None)
    fused.type.tensor_type.shape.CopyFrom(outputs[0].type.tensor_type.shape)
    return nodes, inits, fused


def merge(
    models: Sequence[OnnxModel], fusion: str | None = None, weights: Sequence[float] | None = None
) -> tuple[bytes, list[str]]:
    """The fused model's bytes and its output names: one per member, then ``fused_scores``
    when ``fusion`` is 'mean' or 'weighted' (computed in the graph)."""
    import onnx
    from onnx import helper

    inputs = shared_inputs(models)
    protos, opsets = align_opsets([m.proto() for m in models])
    nodes: list[Any] = []
    inits: list[Any] = []
    sparse: list[Any] = []
    infos: list[Any] = []
    outputs: list[Any] = []
    functions: list[Any] = []
    graph_inputs = {s.name for s in inputs}
    for i, (m, proto) in enumerate(zip(models, protos, strict=True)):
        chosen = m.outputs[score_index(m.outputs)].name
        p = onnx.compose.add_prefix(proto, _prefix(i), rename_inputs=False)
        out = next(o for o in p.graph.output if o.name == _prefix(i) + chosen)
        if out.type.WhichOneof("value") != "tensor_type":
            raise ConfigError(f"member {i}: output '{chosen}' is not a tensor; it cannot be fused")
        nodes += p.graph.node
        inits += [t for t in p.graph.initializer if t.name not in graph_inputs]
        sparse += p.graph.sparse_initializer
        infos += p.graph.value_info
        outputs.append(out)
        functions += p.functions
    if fusion in IN_GRAPH:
        more_nodes, more_inits, fused = _fusion_nodes(outputs, fusion, weights)
        nodes, inits, outputs = nodes + more_nodes, inits + more_inits, [*outputs, fused]
    elif fusion not in (None, "vote", "uncertainty_weighted"):
        raise ConfigError(
            f"unknown fusion '{fusion}'; choose one of: mean, vote, weighted, uncertainty_weighted"
        )
    kept = _needed(nodes, {o.name for o in outputs})
    used = set().union(*(_reads(n) for n in kept))
    graph = helper.make_graph(
        kept, "nimbleml_fused_ensemble", [_value_info(s) for s in inputs], outputs,
        initializer=[t for t in inits if t.name in used],
        sparse_initializer=[t for t in sparse if t.values.name in used],
        value_info=infos,
    )  # fmt: skip
    opset_list = [helper.make_opsetid(d, v) for d, v in sorted(opsets.items())]
    ir = max(
        [p.ir_version for p in protos]
        + [helper.find_min_ir_version_for(opset_list, ignore_unknown=True)]
    )
    fused_model = helper.make_model(graph, opset_imports=opset_list, functions=functions,
                                    producer_name="nimbleml fused ensemble")  # fmt: skip
    fused_model.ir_version = ir
    return fused_model.SerializeToString(), [o.name for o in outputs]


def _value_info(spec: TensorSpec) -> Any:
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    shape = [d if isinstance(d, int) else (d or None) for d in spec.shape]
    return helper.make_tensor_value_info(spec.name, elem, shape)


# -- running ---------------------------------------------------------------------------------
class FusedEnsemble:
    """Several ONNX members as one graph and one ONNX Runtime session.

    ``fused(x)`` / ``run(feeds)`` return each member's scores (see ``score_index``) and, when
    ``fusion`` is 'mean' or 'weighted', the fused scores last (``predict(x)``). Before first
    use the fused graph is checked against each member's own session on random inputs
    (every member output within 1e-6); a mismatch is a ConversionError. ``decide(feeds)``
    times ONNX Runtime's sequential and parallel executors on those feeds (interleaved) and
    keeps the faster; until then the sequential one runs.
    """

    def __init__(
        self,
        members: Sequence[Any],
        fusion: str | None = None,
        weights: Sequence[float] | None = None,
        threads: int | None = None,
        verify: bool = True,
    ) -> None:
        from .predictor import _resolve

        if len(members) < 2:
            raise ConfigError(f"a fused ensemble needs at least 2 members, got {len(members)}")
        self.members: list[Any] = [
            m if isinstance(m, OnnxModel) else _resolve(m, None)[0] for m in members
        ]
        self.fusion = fusion
        self.data, self.output_names = merge(self.members, fusion, weights)
        self.inputs = shared_inputs(self.members)
        # every member's fused output a float tensor of the same shape: they stack as one
        specs = [m.outputs[score_index(m.outputs)] for m in self.members]
        self.float_outputs = all(s.dtype.startswith("float") for s in specs) and all(
            len(s.shape) == len(specs[0].shape) for s in specs
        )
        self.threads = threads or os.cpu_count() or 1
        self.execution = "sequential"
        self.timings_ms: dict[str, float] = {}
        self._runners: dict[str, Any] = {}
        if verify:
            feeds = probe_feeds(self.inputs)
            self.verify(feeds, [m.run(m.feeds(feeds)) for m in self.members])

    @property
    def model(self) -> OnnxModel:
        """The fused graph as an OnnxModel (to benchmark, compress or package it)."""
        return OnnxModel(self.data, threads=self.threads)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.data)
        return path

    def _runner(self, execution: str) -> Any:
        runner = self._runners.get(execution)
        if runner is None:
            import onnxruntime as ort

            n = len(self.members)
            if execution == "parallel":
                so = session_options(max(1, self.threads // n))
                so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
                so.inter_op_num_threads = min(n, self.threads)
            else:
                so = session_options(self.threads)
            try:
                session = ort.InferenceSession(self.data, so, providers=default_providers())
            except Exception as exc:
                raise ConversionError(
                    f"ONNX Runtime cannot load the fused ensemble: {str(exc).splitlines()[0][:300]}"
                ) from exc
            core, names, opts = session._sess, list(self.output_names), ort.RunOptions()
            runner = self._runners[execution] = lambda feeds: core.run(names, feeds, opts)
        return runner

    def feeds(self, x: Any) -> Feeds:
        return self.members[0].feeds(x)

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        """Every member's scores (and the fused scores last when fused in the graph)."""
        return self._runner(self.execution)(feeds)

    def __call__(self, x: Any) -> list[np.ndarray]:
        return self.run(self.feeds(x))

    def predict(self, x: Any) -> np.ndarray:
        """The scores fused in the graph ('mean' or 'weighted')."""
        if self.fusion not in IN_GRAPH:
            raise ConfigError(
                f"the graph computes the fusion for {' and '.join(IN_GRAPH)} only "
                f"(fusion is {self.fusion!r}); run(feeds) gives each member's scores"
            )
        return self(x)[-1]

    def verify(self, feeds: Feeds, expected: Sequence[Sequence[np.ndarray]]) -> None:
        """ConversionError unless each member's fused output equals ``expected`` (the
        members' own outputs on ``feeds``) within 1e-6 (relative to its scale)."""
        got = self.run(feeds)
        for i, (m, theirs) in enumerate(zip(self.members, expected, strict=True)):
            ref = np.asarray(theirs[score_index(m.outputs)])
            mine = np.asarray(got[i])
            if mine.shape != ref.shape:
                raise ConversionError(
                    f"fused ensemble: member {i} gives shape {mine.shape}, alone {ref.shape}"
                )
            if ref.dtype.kind in "fc" and ref.size:
                diff = float(np.max(np.abs(mine.astype(np.float64) - ref)))
                scale = max(1.0, float(np.max(np.abs(ref))))
                if not diff <= 1e-6 * scale:
                    raise ConversionError(
                        f"fused ensemble: member {i}'s output differs from the member alone "
                        f"by {diff:.3g} (allowed {1e-6 * scale:.3g}); use the unfused ensemble"
                    )
            elif not np.array_equal(mine, ref):
                raise ConversionError(f"fused ensemble: member {i}'s output differs from alone")

    def decide(self, feeds: Feeds, rounds: int = 15) -> str:
        """Time ONNX Runtime's sequential and parallel executors, interleaved, on ``feeds``;
        keep parallel only when it is at least 3% faster (and the cores allow it)."""
        if self.threads < 2:
            return self.execution
        runners = {e: self._runner(e) for e in ("sequential", "parallel")}
        times: dict[str, list[float]] = {e: [] for e in runners}
        for run in runners.values():
            run(feeds)
            run(feeds)
        for _ in range(rounds):
            for e, run in runners.items():
                t0 = time.perf_counter()
                run(feeds)
                times[e].append(time.perf_counter() - t0)
        self.timings_ms = {e: float(np.median(t)) * 1e3 for e, t in times.items()}
        faster = self.timings_ms["parallel"] < 0.97 * self.timings_ms["sequential"]
        self.execution = "parallel" if faster else "sequential"
        self._runners = {self.execution: runners[self.execution]}  # free the other session
        return self.execution
