"""Fused ensembles: ONNX members merged into one graph, and EnsemblePredictor's modes."""

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nimbleml
from nimbleml.errors import ConfigError, ConversionError
from nimbleml.models.onnx_model import OnnxModel
from nimbleml.runtime import EnsemblePredictor, FusedEnsemble
from nimbleml.runtime.ensemble import FUSIONS
from nimbleml.runtime.fused import align_opsets


@pytest.fixture(scope="module")
def packages(digits, pipeline):
    """Three scikit-learn classifiers on digits, compressed to ONNX packages."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    Xtr, Xte, ytr, yte = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the short fits
        models = [
            pipeline,
            LogisticRegression(C=0.05, max_iter=200).fit(Xtr, ytr),
            MLPClassifier((16,), max_iter=60, random_state=0).fit(Xtr, ytr),
        ]
    return [
        nimbleml.compress(m, quantize=None, val=(Xte, yte), benchmark_time_s=0.01) for m in models
    ]


def _graph_model(opset: int, name: str = "X", dtype=TensorProto.FLOAT, width: int = 4, scale=1.0):
    """X (N, width) -> the row mean of X * scale (the first float output: the one fused)
    and its softmax, at ``opset`` (ReduceMean's axes moved from an attribute to an input
    at opset 18)."""
    nodes = [
        helper.make_node("Mul", [name, "scale"], ["z"]),
        helper.make_node("Softmax", ["z"], ["soft"], axis=-1),
    ]
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [numpy_helper.from_array(np.array(scale, np_dtype), "scale")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
        nodes.append(helper.make_node("ReduceMean", ["z", "axes"], ["mean"], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", ["z"], ["mean"], axes=[1], keepdims=0))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(name, dtype, ["N", width])],
        [helper.make_tensor_value_info("mean", dtype, ["N"]),
         helper.make_tensor_value_info("soft", dtype, ["N", width])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return OnnxModel(model.SerializeToString())


def test_fused_graph_gives_each_members_outputs_and_fuses_in_graph(packages, digits, tmp_path):
    X = digits[1]
    each = [p.model.run({"X": X}) for p in packages]
    probs = np.stack([e[1] for e in each])  # (label, probabilities): the probabilities
    fused = FusedEnsemble(packages)
    assert fused.output_names == ["m0_probabilities", "m1_probabilities", "m2_probabilities"]
    for got, want in zip(fused(X), probs, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(ConfigError, match="for mean and weighted only"):
        fused.predict(X)

    mean = FusedEnsemble(packages, fusion="mean")
    np.testing.assert_allclose(mean.predict(X), probs.mean(0), atol=1e-6)
    w = np.array([3.0, 1.0, 0.0])
    weighted = FusedEnsemble(packages, fusion="weighted", weights=w)
    np.testing.assert_allclose(weighted.predict(X), np.tensordot(w / 4, probs, 1), atol=1e-6)

    path = weighted.save(tmp_path / "fused.onnx")  # one ONNX file, usable on its own
    onnx.checker.check_model(onnx.load(path))
    alone = OnnxModel(path)
    assert alone.output_names[-1] == "fused_scores" and alone.input_names == ["X"]
    np.testing.assert_allclose(alone({"X": X})[-1], weighted.predict(X), atol=1e-6)


def test_every_mode_gives_the_same_results(packages, digits):
    X = digits[1][:100]
    for fusion in FUSIONS:
        weights = [1, 2, 3] if fusion == "weighted" else None
        outs = {}
        for mode in ("sequential", "threaded", "fused", "auto"):
            with EnsemblePredictor(packages, fusion=fusion, weights=weights, mode=mode) as ens:
                outs[mode] = ens.predict(X)
                outs[mode + " again"] = ens.predict(X[:7])  # after the decision
        ref = outs["sequential"]
        assert ref.labels is not None and (ref.labels == digits[3][:100]).mean() > 0.85
        for mode, out in outs.items():
            want = ref if "again" not in mode else outs["sequential again"]
            np.testing.assert_allclose(out.scores, want.scores, atol=1e-6, err_msg=mode)
            np.testing.assert_allclose(out.uncertainty, want.uncertainty, atol=1e-6)
            np.testing.assert_allclose(out.members, want.members, atol=1e-6)
            assert np.array_equal(out.labels, want.labels), (fusion, mode)


def test_forced_modes_and_the_measured_decision(packages, pipeline, digits):
    X = digits[1][:1]
    with EnsemblePredictor(packages, mode="fused") as ens:
        assert ens.mode == "fused" and ens.fused is not None
        ens.predict(X)
        assert ens.timings_ms == {} and ens._pool is None  # forced: nothing timed
    with EnsemblePredictor(packages, mode="threaded") as ens:
        assert ens.mode == "parallel" and ens.fused is None
        assert ens.predict(X).scores.shape == (1, 10)
    with EnsemblePredictor(packages, parallel=True) as ens:
        assert ens.mode == "undecided"
        ens.predict(X)
        assert ens.mode in ("sequential", "parallel", "fused")
        assert set(ens.timings_ms) == {"sequential", "parallel", "fused"}
        assert all(t > 0 for t in ens.timings_ms.values())
        assert ens.fused is not None and ens.fused.execution in ("sequential", "parallel")
        assert set(ens.fused.timings_ms) <= {"sequential", "parallel"}
    # a scikit-learn estimator (not ONNX) cannot be fused: auto leaves fused out, says why
    with EnsemblePredictor([pipeline, packages[0]]) as ens:
        ens.predict(X)
        assert "fused" not in ens.timings_ms and "sklearn model" in ens.fused_unavailable
    with pytest.raises(ConfigError, match="mode='fused' is not possible here: member 0"):
        EnsemblePredictor([pipeline, packages[0]], mode="fused")
    with pytest.raises(ConfigError, match="choose one of: auto, sequential"):
        EnsemblePredictor(packages, mode="turbo")


def test_members_must_share_their_inputs():
    base = _graph_model(17)
    with pytest.raises(ConfigError, match=r"different inputs \(\['X'\] vs \['Y'\]\)"):
        FusedEnsemble([base, _graph_model(17, name="Y")])
    with pytest.raises(
        ConfigError, match="input 'X': member 0 takes float32, member 1 takes float64"
    ):
        FusedEnsemble([base, _graph_model(17, dtype=TensorProto.DOUBLE)])
    with pytest.raises(
        ConfigError, match=r"input 'X': member 0 takes shape \['N', 4\], member 1 takes \['N', 5\]"
    ):
        FusedEnsemble([base, _graph_model(17, width=5)])
    with pytest.raises(ConfigError, match="mode='fused' is not possible here: input 'X'"):
        EnsemblePredictor([base, _graph_model(17, width=5)], mode="fused")


def test_opsets_are_aligned_and_old_members_converted():
    old, new = _graph_model(13, scale=0.5), _graph_model(18, scale=2.0)
    fused = FusedEnsemble([old, new])  # verified against each member alone on random inputs
    proto = onnx.load_from_string(fused.data)
    assert {o.domain: o.version for o in proto.opset_import} == {"": 18}
    assert [o.name for o in proto.graph.output] == ["m0_mean", "m1_mean"]
    reduce = [n for n in proto.graph.node if n.op_type == "ReduceMean"]
    assert [len(n.input) for n in reduce] == [2, 2]  # member 0's converted: axes as input
    assert not any(n.op_type == "Softmax" for n in proto.graph.node)  # unused: pruned
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    for got, member in zip(fused(x), (old, new), strict=True):
        np.testing.assert_allclose(got, member({"X": x})[0], atol=1e-6)

    # ai.onnx.ml cannot be converted: a member whose ML operator changed is refused
    def ml(version: int, declared_unused: int | None = None):
        node = helper.make_node("TreeEnsembleClassifier", ["X"], ["y"], domain="ai.onnx.ml")
        g = helper.make_graph([node], "g", [], [])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", version)])  # fmt: skip

    with pytest.raises(
        ConfigError, match="ai.onnx.ml opset 1, whose TreeEnsembleClassifier changed by opset 3"
    ):
        align_opsets([ml(1), ml(3)])
    declared_only = helper.make_model(
        helper.make_graph([], "g", [], []),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 5)],
    )
    _, target = align_opsets([ml(1), declared_only])  # declared but unused: no conflict
    assert target == {"": 17, "ai.onnx.ml": 1}


def test_a_fused_graph_that_disagrees_is_not_trusted(packages, digits, monkeypatch):
    X = digits[1][:4]
    fused = FusedEnsemble(packages)
    wrong = [p.model.run({"X": X}) for p in packages]
    wrong[1][1] = wrong[1][1] + 1e-3
    with pytest.raises(ConversionError, match="member 1's output differs .* by 0.001"):
        fused.verify({"X": X}, wrong)

    ens = EnsemblePredictor(packages)
    assert ens.fused is not None

    def disagree(self, feeds, expected):
        raise ConversionError("fused ensemble: member 0's output differs")

    monkeypatch.setattr(FusedEnsemble, "verify", disagree)
    with ens, pytest.warns(RuntimeWarning, match="the members run unfused"):
        ens.predict(X)
    assert ens.fused is None and "fused" not in ens.timings_ms


def test_compare_times_members_and_every_way(packages, digits):
    with EnsemblePredictor(packages, mode="sequential") as ens:
        table = ens.compare(digits[1], batch_sizes=(1, 16), time_budget_s=0.05)
    assert set(table) == {1, 16}
    for stats in table.values():
        names = [n.split(":")[0] for n in stats]
        assert names == ["member 0", "member 1", "member 2", "sequential", "threaded", "fused"]
        assert all(s.n >= 3 and s.p50_ms > 0 for s in stats.values())
