"""Issue 22 for predict: a missing value is refused with its row and column (not written as
blank outputs with exit 0), a same-size edit with the mtime set back is another job (not old
parts mixed into the output), and Ctrl-C is one line, exit 130, and resumable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import nimbleml
from nimbleml.errors import ConfigError, DataError
from tests._signals import default_sigint

pytest.importorskip("pyarrow")


@pytest.fixture
def frame(digits):
    _, Xte, _, _ = digits
    out = pd.DataFrame(Xte, columns=[f"p{i}" for i in range(64)])
    out.insert(0, "id", np.arange(len(out)))
    return out


def test_a_missing_value_is_refused_with_its_row_and_column(fp32_package, frame, tmp_path):
    bad = frame.copy()
    bad.loc[333, "p7"] = np.nan
    bad.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match=r"row 333, column 7 holds a missing value \(NaN\)"):
        nimbleml.predict_file(fp32_package, tmp_path / "in.csv", out, chunk_rows=100,
                              id_column="id")  # fmt: skip
    assert not out.exists()  # no output with blanks in it
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.glob("part-*"))) == 3  # rows 0-299 kept for the fixed file's run


def test_a_same_size_edit_with_the_mtime_set_back_is_another_job(fp32_package, frame, tmp_path):
    data = tmp_path / "in.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "out.csv"

    class Stop(Exception):
        pass

    def stop(done, _total):
        if done >= 300:
            raise Stop

    with pytest.raises(Stop):
        nimbleml.predict_file(fp32_package, data, out, chunk_rows=100, id_column="id",
                              progress=stop)  # fmt: skip
    before = data.stat()
    text = data.read_bytes()
    at = text.index(b"\n", len(text) // 2) + 1  # a row in the second half: not done yet
    row_end = text.index(b"\n", at)
    row = text[at:row_end]
    edited = row.replace(b"0.0", b"1.0", 1) if b"0.0" in row else row[::-1]
    assert len(edited) == len(row) and edited != row
    data.write_bytes(text[:at] + edited + text[row_end:])
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))  # the mtime set back
    assert data.stat().st_size == before.st_size
    with pytest.raises(ConfigError, match="unfinished run of another job"):
        nimbleml.predict_file(fp32_package, data, out, chunk_rows=100, id_column="id")


def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes(fp32_package, frame, tmp_path):
    big = pd.concat([frame] * 120, ignore_index=True)  # 87 chunks: seconds, not a blink
    big["id"] = np.arange(len(big))
    big.to_csv(tmp_path / "in.csv", index=False)
    cmd = [
        sys.executable,
        "-m",
        "nimbleml.cli",
        "predict",
        str(fp32_package),
        "--data",
        "in.csv",
        "--out",
        "out.csv",
        "--id-column",
        "id",
        "--chunk-rows",
        "500",
        "--batch-size",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)  # fmt: skip
    parts = tmp_path / "out.csv.parts"
    deadline = time.monotonic() + 60
    # a finished part, not the ".tmp" one being written (an interrupt removes that one)
    while (
        not list(parts.glob("part-*.csv")) and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "interrupted; run the same command to resume"
    assert stdout.strip() == ""
    done = len(list(parts.glob("part-*.csv")))
    assert done >= 1
    assert not list(parts.glob("*.tmp"))
    again = subprocess.run([*cmd, "-q"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"{done} chunk(s) kept from an earlier run" in again.stdout
    assert pd.read_csv(tmp_path / "out.csv")["id"].tolist() == big["id"].tolist()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_double_graph_package_predicts_the_files_float64_values(tmp_path, suffix):
    """A scikit-learn package exact on float64 gets the file's float64 values, not float32
    copies (which send rows near a split threshold down the other branch)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = load_breast_cancer(return_X_y=True)
    model = HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(X, y)
    pkg = nimbleml.compress(model, quantize=None, val=(X, y), benchmark_time_s=0)
    assert pkg.manifest["conversion"]["converter"] == "precision=double"
    from nimbleml.models import load_model
    from nimbleml.models.sklearn_boundary import boundary_cases

    source = load_model(model, X[:4])
    edges = dict(boundary_cases(source, source.feeds(X)))["tree thresholds"]["X"]
    frame = pd.DataFrame(edges, columns=[f"c{i}" for i in range(X.shape[1])])
    data = tmp_path / f"edges{suffix}"
    frame.to_csv(data, index=False, float_format="%.17g") if suffix == ".csv" else frame.to_parquet(
        data
    )
    out = tmp_path / "out.csv"
    nimbleml.predict_file(pkg.save(tmp_path / "p.nimble"), data, out, chunk_rows=1000)
    got = pd.read_csv(out)
    np.testing.assert_array_equal(got["label"].to_numpy(), model.predict(edges))
    proba = got[["probabilities_0", "probabilities_1"]].to_numpy()
    np.testing.assert_allclose(proba, model.predict_proba(edges), rtol=0, atol=1e-6)
