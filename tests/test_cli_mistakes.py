"""Issue 22, part 2 and 6: what a new user got wrong, said as the user's mistake (exit 2, one
line naming the problem and the fix), never "a bug in nimbleml", and never twice."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

import nimbleml
from nimbleml.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def d(tmp_path_factory, digits):
    d = tmp_path_factory.mktemp("mistakes")
    Xtr, Xte, ytr, yte = digits
    joblib.dump(LogisticRegression(max_iter=300).fit(Xtr, ytr), d / "lr.joblib")
    nan = Xte.copy()
    nan[5, 17] = np.nan
    np.savez(d / "with_nan.npz", X=nan, y=yte)
    (d / "garbage.onnx").write_bytes(b"\x08\x07 this is not an onnx graph")
    (d / "header.csv").write_text(",".join(f"p{i}" for i in range(64)) + ",y\n")
    rows = [",".join(["1"] * 65)] * 3
    rows[1] = ",".join(["1"] * 20 + [""] + ["1"] * 44)
    (d / "hole.csv").write_text(",".join(f"p{i}" for i in range(64)) + ",y\n" + "\n".join(rows))
    pkg = nimbleml.compress(
        LogisticRegression(max_iter=300).fit(Xtr, ytr), quantize=None, val=(Xte, yte),
        benchmark_time_s=0,
    )  # fmt: skip
    pkg.save(d / "lr.nimble")
    np.savez(d / "val.npz", X=Xte, y=yte)
    runner.invoke(app, ["bench", str(d / "lr.nimble"), "--data", str(d / "val.npz"),
                        "--json", str(d / "bench.json"), "-q"])  # fmt: skip
    assert json.loads((d / "bench.json").read_text())["results"]
    return d


CASES = [
    # a NaN in --val for a model without an imputer: ValueError from scikit-learn before
    ("compress {d}/lr.joblib --trust-pickle --val {d}/with_nan.npz -o {d}/o",
     "row 5, column 17 holds a missing value (NaN)"),
    # a corrupt file is named before anything asks for --calib/--val
    ("compress {d}/garbage.onnx -o {d}/o", "cannot load this model"),
    # the flag once, in the CLI's words
    ("compress {d}/lr.joblib --val {d}/val.npz -o {d}/o", "pass --trust-pickle if you trust"),
    ("compress {d}/lr.joblib --trust-pickle --val {d}/header.csv --target y -o {d}/o",
     "holds a header and no data rows"),
    ("compress {d}/lr.joblib --trust-pickle --val {d}/hole.csv --target y -o {d}/o",
     "data row 2, column 'p20' is empty (a missing value)"),
    ("compress {d}/lr.joblib --trust-pickle --quantize int3 -o {d}/o",
     "torch-int8, int16, or none (no quantization)"),
    ("deploy {d}/lr.nimble --target docker --serve-report {d}/bench.json -o {d}/dep",
     "is a `nimbleml bench` report (in-process latency of lr.nimble)"),
]  # fmt: skip


@pytest.mark.parametrize("argv, words", CASES, ids=[c[0].split()[0] + str(i)
                                                    for i, c in enumerate(CASES)])  # fmt: skip
def test_the_users_mistake_is_one_line_exit_2(d, argv, words):
    before = sorted(p.name for p in d.iterdir())
    res = runner.invoke(app, argv.format(d=d).split())
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2, res.output
    assert len(errors) == 1 and words in errors[0], res.output
    assert "a bug in nimbleml" not in res.output and "Traceback" not in res.output
    assert errors[0].count("--trust-pickle") <= 1
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written


def test_predict_help_and_messages_speak_cli(d, tmp_path):
    np.savetxt(tmp_path / "rows.csv", np.ones((3, 65)), delimiter=",", header=",".join(
        [f"p{i}" for i in range(65)]), comments="")  # fmt: skip
    res = runner.invoke(app, ["predict", str(d / "lr.nimble"), "--data", str(tmp_path / "rows.csv"),
                              "--out", str(tmp_path / "o.csv")])  # fmt: skip
    assert res.exit_code == 2
    assert "give --id-column for a column of row ids" in res.output, res.output
