import numpy as np
import pytest

from nimbleml.errors import DataError, ModelLoadError
from nimbleml.models import OnnxModel, load_model


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, pipeline):
    from skl2onnx import to_onnx

    path = tmp_path_factory.mktemp("onnx") / "p.onnx"
    final = pipeline.steps[-1][1]
    onx = to_onnx(pipeline, np.zeros((1, 64), np.float32), options={id(final): {"zipmap": False}})
    path.write_bytes(onx.SerializeToString())
    return path


def test_onnx_file_runs_and_casts_inputs(onnx_file, pipeline, digits):
    model = load_model(onnx_file)
    assert isinstance(model, OnnxModel)
    assert model.inputs[0].dtype == "float32"
    labels = model(digits[1].astype(np.float64))[0]  # float64 is cast, not refused
    assert np.array_equal(labels, pipeline.predict(digits[1]))
    assert model.size_bytes() == onnx_file.stat().st_size
    assert model.num_parameters() > 640


def test_bad_shapes_are_named(onnx_file):
    model = load_model(onnx_file)
    with pytest.raises(DataError, match="dimension 1 must be 64"):
        model(np.zeros((2, 10), np.float32))


def test_corrupt_onnx_is_a_load_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        _ = load_model(bad).inputs


def test_fast_runner_matches_the_public_api(onnx_file, digits):
    model = load_model(onnx_file)
    feeds = model.feeds(digits[1])
    public = model.session.run(None, feeds)
    fast = model.run(feeds)
    assert len(fast) == len(public)
    for a, b in zip(fast, public, strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(Exception, match="X"):  # a wrong name still fails inside ONNX Runtime
        model.run({"not_X": feeds["X"]})
