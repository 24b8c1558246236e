"""The openvino and openvino-int8 recipes, and compress(runtime="openvino")."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import nimbleml
from nimbleml.compress import Context, get_recipe
from nimbleml.compress.openvino import calibration_items, transformer_parts
from nimbleml.errors import ConfigError, ConversionError, UnsupportedError
from nimbleml.inputs import TensorSpec
from nimbleml.models.openvino_model import OpenVinoModel
from nimbleml.verify import compare_outputs
from tests.conftest import token_batch


def test_int8_keeps_the_mlp_accuracy_with_a_calib_of_300_rows(mlp_onnx, digits):
    X, y = digits[1], digits[3]
    ctx = Context(example={"input": X[:16]}, calib={"input": X[:300]})
    recipe = get_recipe("openvino-int8")
    recipe.check(mlp_onnx, ctx)
    q = recipe.apply(mlp_onnx, ctx)
    assert isinstance(q, OpenVinoModel) and q.output_names == mlp_onnx.output_names
    params = recipe.params()
    # 300 rows: nine batches of 32 and one of 12, all of them used
    assert (params["rows"], params["items"], params["batch"]) == (300, 10, 32)
    assert params["model_type_used"] == "none" and params["nncf"]
    accuracy = (q.run({"input": X})[0].argmax(1) == y).mean()
    baseline = (mlp_onnx.run({"input": X})[0].argmax(1) == y).mean()
    assert accuracy >= baseline - 0.01
    assert q.size_bytes() < 0.6 * OpenVinoModel.from_onnx(mlp_onnx).size_bytes()  # int8 weights


def test_int8_on_an_encoder_takes_the_transformer_scheme(encoder_onnx):
    source, onnx_model = encoder_onnx
    calib = token_batch(n=300, seed=1)
    ctx = Context(example=token_batch(n=16, seed=2), calib=calib)
    fp32 = OpenVinoModel.from_onnx(onnx_model)
    assert transformer_parts(fp32.ov_model) == ["Softmax", "attention MatMul", "LayerNorm-like"]
    recipe = get_recipe("openvino-int8")
    q = recipe.apply(onnx_model, ctx)
    assert recipe.params()["model_type_used"] == "transformer"
    held_out = token_batch(n=64, seed=5)
    agreement = compare_outputs(source.run(held_out), q.run(held_out))
    assert agreement.cosine >= 0.99, agreement


def test_calibration_items_take_any_row_count():
    def feeds(n):
        return {"x": np.arange(n * 2, dtype=np.float32).reshape(n, 2)}

    dynamic = _Specs([TensorSpec("x", "float32", ("batch", 2))])
    for n in (1, 7, 31, 32, 33, 300, 1000):
        items, batch = calibration_items(feeds(n), 300, dynamic)
        assert sum(len(i["x"]) for i in items) == min(n, 300)
        assert all(len(i["x"]) == batch for i in items[:-1])
    fixed = _Specs([TensorSpec("x", "float32", (8, 2))])  # a graph with its batch fixed at 8
    for n in (3, 8, 20):
        items, batch = calibration_items(feeds(n), 300, fixed)
        assert batch == 8 and items and all(len(i["x"]) == 8 for i in items)


class _Specs:
    """What calibration_items reads of a model: its input specs."""

    def __init__(self, inputs):
        self.inputs = inputs


def test_missing_calib_and_bad_parameters_are_named(mlp_onnx, digits):
    ctx = Context(example={"input": digits[1][:8]})
    with pytest.raises(ConfigError, match="needs calibration data"):
        get_recipe("openvino-int8").check(mlp_onnx, ctx)
    ctx.calib = ctx.example
    with pytest.raises(ConfigError, match=r"needs a score .*Context.score"):
        get_recipe("openvino-int8", accuracy_control=True).check(mlp_onnx, ctx)
    with pytest.raises(ConfigError, match="choose one of: auto, transformer, none"):
        get_recipe("openvino-int8", model_type="bert")
    with pytest.raises(ConfigError, match="choose one of: performance, mixed"):
        get_recipe("openvino-int8", preset="fast")
    with pytest.raises(ConfigError, match="subset_size"):
        get_recipe("openvino-int8", subset_size=0)
    with pytest.raises(UnsupportedError, match="works on onnx"):
        get_recipe("openvino").check(OpenVinoModel.from_onnx(mlp_onnx), ctx)


def test_accuracy_control_scores_candidates_with_context_score(mlp_onnx, digits):
    X, y = digits[1], digits[3]
    scored = []

    def score(model):
        accuracy = float((model.run({"input": X})[0].argmax(1) == y).mean())
        scored.append(accuracy)
        return accuracy

    ctx = Context(example={"input": X[:16]}, calib={"input": X[:64]}, score=score)
    recipe = get_recipe("openvino-int8", accuracy_control=True, max_drop=0.005, subset_size=64)
    recipe.check(mlp_onnx, ctx)
    q = recipe.apply(mlp_onnx, ctx)
    assert len(scored) >= 2  # the float model, then the int8 one(s)
    assert (q.run({"input": X})[0].argmax(1) == y).mean() >= scored[0] - 0.02
    assert recipe.params()["accuracy_control"] is True


def test_an_nncf_failure_is_one_readable_line(mlp_onnx, digits, monkeypatch):
    import nncf

    def broken(*args, **kwargs):
        raise RuntimeError("Exception from src/core/x.cpp:1:\nthe statistics are empty\n\n")

    monkeypatch.setattr(nncf, "quantize", broken)
    ctx = Context(example={"input": digits[1][:8]}, calib={"input": digits[1][:40]})
    with pytest.raises(UnsupportedError) as info:
        get_recipe("openvino-int8").apply(mlp_onnx, ctx)
    assert str(info.value) == "NNCF could not quantize this model: the statistics are empty"


def test_compress_checks_runtime_and_quantize_together(mlp):
    with pytest.raises(ConfigError, match="choose one of: onnxruntime, openvino"):
        nimbleml.compress(mlp, runtime="tensorrt")
    with pytest.raises(ConfigError, match=r"runtime='openvino' takes quantize=None .* 'int8'"):
        nimbleml.compress(mlp, quantize="fp16", runtime="openvino")


def test_a_model_openvino_cannot_read_fails_in_one_line(pipeline, digits):
    _, Xte, _, yte = digits
    with pytest.raises(ConversionError, match="OpenVINO cannot read this ONNX model") as info:
        nimbleml.compress(pipeline, quantize=None, runtime="openvino", val=(Xte, yte),
                          benchmark_time_s=0.01)  # fmt: skip
    assert "\n" not in str(info.value) and "ai.onnx.ml" in str(info.value)


def test_compress_with_openvino_verifies_times_and_records_the_runtime(ov_packages, digits):
    for name, step in (("fp32", "openvino"), ("int8", "openvino-int8")):
        pkg = nimbleml.load(ov_packages[name])
        m = pkg.manifest
        assert [s["step"] for s in m["recipe"]] == [step]
        assert m["runtime"] == {"engine": "openvino", "why": "chosen by the caller"}
        assert m["validation"]["drop"] <= 0.01 and m["fallback"] is None
        assert {a["case"] for a in m["validation"]["agreement"]} >= {"batch=1", "batch=16"}
        assert set(m["benchmark"]) == {"batch_1", "batch_32"}
        assert isinstance(pkg.model, OpenVinoModel) and not pkg.using_baseline
    int8 = nimbleml.load(ov_packages["int8"]).manifest["recipe"][0]["params"]
    # calib defaulted to the validation inputs (540 rows): the first 300 of them
    assert int8["rows"] == 300 and int8["subset_size"] == 300
