import pickle

import numpy as np
import pytest
import skops.io
from sklearn.datasets import load_diabetes
from sklearn.kernel_ridge import KernelRidge

from nimbleml.compress.pipeline import convert_verified
from nimbleml.errors import ModelLoadError, NoConverterError, UntrustedPickleError
from nimbleml.models import load_model
from nimbleml.verify import variants


def test_pipeline_adapter_outputs_match_scikit_learn(pipeline, digits):
    Xte = digits[1]
    model = load_model(pipeline)
    assert model.task == "classification"
    label, proba = model(Xte)
    assert np.array_equal(label, pipeline.predict(Xte))
    assert np.allclose(proba, pipeline.predict_proba(Xte), atol=1e-6)
    assert model.num_parameters() == 64 * 2 + 640 + 10  # scaler mean/scale, coef, intercept


def test_pipeline_and_forest_convert_with_full_label_agreement(pipeline, forest, digits):
    for est in (pipeline, forest):
        model = load_model(est)
        onnx_model, report = convert_verified(model, variants(model.feeds(digits[1])))
        labels = onnx_model(digits[1])[0]
        assert np.array_equal(labels, est.predict(digits[1]))
        assert all(r["label_agreement"] == 1.0 for r in report["cases"])


def test_regressor_and_missing_converter():
    X, y = load_diabetes(return_X_y=True)
    model = load_model(KernelRidge(alpha=1.0).fit(X, y))
    assert model.task == "regression" and model.output_names == ["variable"]
    with pytest.raises(NoConverterError, match="no converter for KernelRidge"):
        convert_verified(model, variants(model.feeds(X[:8])))


def test_skops_and_pickle_files(tmp_path, pipeline, digits):
    skops.io.dump(pipeline, tmp_path / "p.skops")
    loaded = load_model(tmp_path / "p.skops")
    assert np.array_equal(loaded(digits[1])[0], pipeline.predict(digits[1]))
    with open(tmp_path / "p.pkl", "wb") as fh:
        pickle.dump(pipeline, fh)
    with pytest.raises(UntrustedPickleError, match="skops"):
        load_model(tmp_path / "p.pkl")
    assert load_model(tmp_path / "p.pkl", trust_pickle=True).task == "classification"


def test_unfitted_estimator_is_refused():
    with pytest.raises(ModelLoadError, match="not fitted"):
        load_model(KernelRidge())
