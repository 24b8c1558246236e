"""The one missing-value policy in ensembles (issue 22): a NaN in the input is refused with
its row and column (the API and the ensemble verb), unless every member is a package verified
on missing values, which then takes it as scikit-learn does."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import nimbleml
from nimbleml.cli import app
from nimbleml.errors import DataError
from nimbleml.runtime import EnsemblePredictor

FAST = {"benchmark_time_s": 0.01, "benchmark_batch_sizes": (1,)}


@pytest.fixture(scope="module")
def packages(digits, tmp_path_factory):
    from sklearn.linear_model import LogisticRegression

    Xtr, Xte, ytr, yte = digits
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for i, c in enumerate((0.1, 1.0)):
        model = LogisticRegression(C=c, max_iter=300).fit(Xtr, ytr)
        pkg = nimbleml.compress(model, quantize=None, val=(Xte, yte), **FAST)
        paths.append(str(pkg.save(folder / f"m{i}.nimble")))
    return paths


def test_nan_is_refused_with_its_row_and_column(packages, digits):
    X = digits[1][:10].copy()
    X[6, 5] = np.nan
    with EnsemblePredictor(packages, parallel=False) as ens:
        assert ens.missing_ok is False
        assert ens.predict(X[:6]).scores.shape == (6, 10)  # no NaN there
        with pytest.raises(DataError, match=r"row 6, column 5 holds a missing value \(NaN\)"):
            ens.predict_batch(X, batch_size=4)  # row 6 counted over the whole input
        with pytest.raises(DataError, match=r"the ensemble's input: row 6, column 5"):
            ens.predict(X)


def test_the_ensemble_verb_names_the_data_file(packages, digits, tmp_path):
    X = digits[1][:10].copy()
    X[3, 0] = np.nan
    np.savez(tmp_path / "holes.npz", X=X, y=digits[3][:10])
    res = CliRunner().invoke(app, ["ensemble", *packages, "--data", str(tmp_path / "holes.npz")])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: --data {tmp_path / 'holes.npz'}: row 3, column 0 holds a missing "
                      "value (NaN); fill or drop those rows first, or put an imputer in the model "
                      "(a package verified on missing values accepts them)"]  # fmt: skip


def test_packages_verified_on_missing_values_take_nan(tmp_path):
    from tests.models.test_sklearn_frames import customers, scaled_onehot

    train, ytr = customers(200, seed=0)
    val, yva = customers(60, seed=1)
    pkgs = [nimbleml.compress(scaled_onehot().fit(train, ytr), quantize=None, val=(val, yva),
                              **FAST) for _ in range(2)]  # fmt: skip
    assert val["age"].isna().any()  # the data holds missing ages
    with EnsemblePredictor(pkgs, parallel=False) as ens:
        assert ens.missing_ok is True
        out = ens.predict(val)
    assert np.isfinite(out.scores).all() and out.scores.shape[0] == len(val)
