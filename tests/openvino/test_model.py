"""OpenVinoModel: verified against the ONNX original, names kept through save/load, thread
safety, the bounded cache of static compilations, and one-line errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("openvino")

from nimbleml.errors import MissingDependencyError, ModelLoadError
from nimbleml.models import load_model
from nimbleml.models.openvino_model import OpenVinoModel, openvino_missing
from nimbleml.verify import check, compare_outputs, variants
from tests.conftest import token_batch


def test_ir_matches_onnx_at_batch_1_and_32(mlp_onnx, digits):
    ov = OpenVinoModel.from_onnx(mlp_onnx, static_after=1)
    X = digits[1]
    for n in (1, 32, 1, 32, 7):  # dynamic first, then the static compilations
        feeds = {"input": X[:n]}
        assert np.allclose(ov.run(feeds)[0], mlp_onnx.run(feeds)[0], atol=1e-5)
    assert set(ov.compiled_shapes()) == {((1, 64),), ((32, 64),), ((7, 64),)}
    assert ov.precision == "f32"  # not the bf16 OpenVINO picks on AVX512_BF16 CPUs


def test_ir_of_an_encoder_matches_pytorch_on_padded_tokens(encoder_onnx):
    source, onnx_model = encoder_onnx
    ov = OpenVinoModel.from_onnx(onnx_model, static_after=2)
    tokens = token_batch(n=32, length=12, seed=3)  # random lengths, padding masked out
    cases = [*variants(tokens, max_batch=32), ("batch=32 again", tokens)]
    check(source.run, ov.run, cases, what="OpenVINO IR")  # raises when they disagree
    assert [s.name for s in ov.inputs] == ["input_ids", "attention_mask"]
    assert ov.inputs[0].shape[0] == onnx_model.inputs[0].shape[0]  # symbolic dims kept


def test_a_cnn_runs_the_same(cnn):
    from nimbleml.compress.pipeline import convert_verified

    net, images = cnn
    source = load_model(net, images[:16])
    onnx_model, _ = convert_verified(source, variants(source.feeds(images)))
    ov = OpenVinoModel.from_onnx(onnx_model, static_after=1)
    for n in (1, 32, 32):
        got = ov.run({ov.input_names[0]: images[:n]})
        assert compare_outputs(source.run(source.feeds(images[:n])), got).max_abs_err < 1e-4


def test_names_dtypes_and_dims_survive_save_and_load(mlp_onnx, tmp_path):
    ov = OpenVinoModel.from_onnx(mlp_onnx)
    assert ov.save(tmp_path, "model") == "model.xml"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    loaded = OpenVinoModel(tmp_path / "model.xml")
    assert loaded.inputs == mlp_onnx.inputs and loaded.outputs == mlp_onnx.outputs
    assert loaded.digest() == ov.digest()
    assert loaded.size_bytes() == sum(p.stat().st_size for p in tmp_path.iterdir())
    # weights counted as in ONNX (OpenVINO folds a shape or two: within a few elements)
    assert abs(loaded.num_parameters() - mlp_onnx.num_parameters()) < 32
    assert load_model(tmp_path / "model.xml").output_names == mlp_onnx.output_names


def test_outputs_are_copies_not_views_of_openvino_buffers(mlp_onnx, digits):
    ov = OpenVinoModel.from_onnx(mlp_onnx, static_after=1)
    X = digits[1]
    first = ov.run({"input": X[:4]})[0]
    kept = first.copy()
    ov.run({"input": X[4:8]})
    assert np.array_equal(first, kept) and first.flags.owndata


def test_threads_with_different_batch_sizes_get_their_own_answers(mlp_onnx, digits):
    ov = OpenVinoModel.from_onnx(mlp_onnx, static_after=3, max_shapes=3)
    X = digits[1]
    sizes = [1, 2, 5, 16, 32, 7]
    expected = {n: mlp_onnx.run({"input": X[n : 2 * n]})[0] for n in sizes}
    errors: list[str] = []
    start = threading.Barrier(len(sizes))

    def worker(n: int) -> None:
        start.wait()
        for _ in range(40):
            got = ov.run({"input": X[n : 2 * n]})[0]
            if got.shape != (n, 10) or not np.allclose(got, expected[n], atol=1e-5):
                errors.append(f"batch {n}: wrong outputs")
                return

    threads = [threading.Thread(target=worker, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(ov.compiled_shapes()) <= 3  # bounded: 6 shapes, 3 static compilations


def test_the_static_compilations_are_a_bounded_lru(mlp_onnx, digits):
    ov = OpenVinoModel.from_onnx(mlp_onnx, static_after=1, max_shapes=2)
    X = digits[1]
    for n in (1, 2, 3, 2, 4):
        ov.run({"input": X[:n]})
    assert ov.compiled_shapes() == [((2, 64),), ((4, 64),)]  # 1 and 3 evicted, 2 kept (used)
    for n in range(5, 30):  # shapes that never repeat keep evicting: static compiling stops
        ov.run({"input": X[:n]})
    assert ov.evictions > 4 * ov.max_shapes
    before = ov.compiled_shapes()
    assert np.allclose(
        ov.run({"input": X[:31]})[0], mlp_onnx.run({"input": X[:31]})[0], atol=1e-5
    )  # answered by the dynamic compilation
    assert ov.compiled_shapes() == before


def test_with_threads_is_a_configured_clone(mlp_onnx, digits):
    ov = OpenVinoModel.from_onnx(mlp_onnx)
    served = ov.with_threads(1, spin=False)
    assert served is not ov and served.ov_model is ov.ov_model
    config = served.config()
    assert config["INFERENCE_NUM_THREADS"] == 1 and config["ENABLE_CPU_PINNING"] is False
    assert config["PERFORMANCE_HINT"] == "LATENCY"
    assert "ENABLE_CPU_PINNING" not in ov.config()
    assert served.output_names == ov.output_names
    assert np.allclose(served(digits[1][:3]), ov(digits[1][:3]))


def test_a_damaged_ir_is_one_clear_line(mlp_onnx, tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        OpenVinoModel(tmp_path / "nope.xml")
    OpenVinoModel.from_onnx(mlp_onnx).save(tmp_path, "m")
    (tmp_path / "m.bin").rename(tmp_path / "gone.bin")
    with pytest.raises(ModelLoadError, match="weights file m.bin is missing"):
        OpenVinoModel(tmp_path / "m.xml")
    (tmp_path / "x.xml").write_text('<?xml version="1.0"?>\n<net name="x"><layers/></net>')
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="OpenVINO cannot read x.xml") as info:
        OpenVinoModel(tmp_path / "x.xml")
    assert "\n" not in str(info.value) and "src/" not in str(info.value)
    (tmp_path / "y.xml").write_text("not xml at all")
    (tmp_path / "y.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not an OpenVINO IR"):
        OpenVinoModel(tmp_path / "y.xml")
    with pytest.raises(ModelLoadError, match="precision 'int3'"):
        OpenVinoModel.from_onnx(mlp_onnx, precision="int3")


def test_without_openvino_the_error_says_what_to_install(mlp_onnx, monkeypatch, tmp_path):
    import sys

    from nimbleml.models import openvino_model

    assert openvino_missing() is None and openvino_missing(nncf=True) is None
    OpenVinoModel.from_onnx(mlp_onnx).save(tmp_path, "m")
    monkeypatch.setitem(sys.modules, "openvino", None)
    openvino_model.core.cache_clear()
    try:
        assert openvino_missing() == "not installed: pip install 'nimbleml[openvino]'"
        with pytest.raises(MissingDependencyError, match=r"pip install 'nimbleml\[openvino\]'"):
            OpenVinoModel(tmp_path / "m.xml")
    finally:
        openvino_model.core.cache_clear()
