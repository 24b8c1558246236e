"""Batch prediction on Ray Data (issue 14, part 4): a local Ray instance started here, the
same outputs as the local path (rows in the input's order, ids kept or numbered), bad input
found on the driver before the cluster is asked for anything, nothing left behind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import nimbleml
from nimbleml.cli import app
from nimbleml.errors import ConfigError, DataError

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def package(fp32_package):
    return fp32_package


@pytest.fixture(scope="module")
def cluster():
    """A Ray instance on this machine for the module: 3 logical CPUs (two actors at 1 CPU
    each and one for the read and write tasks), on the loopback address."""
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture
def frame(digits):
    _, Xte, _, _ = digits
    frame = pd.DataFrame(np.tile(Xte, (3, 1)), columns=[f"p{i}" for i in range(64)])
    frame.insert(0, "id", np.arange(len(frame)) * 10 + 7)
    return frame


def test_bad_input_is_found_before_ray_starts(package, frame, tmp_path):
    """No cluster here: every one of these fails on the driver, before connecting."""
    assert not ray.is_initialized()
    bad = frame.astype({"p5": str})  # a text column, as a careless export writes it
    bad.loc[1234, "p5"] = "abc"
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"row 1234, column 'p5': 'abc' is not a number"):
        nimbleml.predict_file(package, tmp_path / "bad.parquet", tmp_path / "o.parquet",
                              id_column="id", ray="auto")  # fmt: skip
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"row 1234, column 'p5'"):
        nimbleml.predict_file(package, tmp_path / "bad.csv", tmp_path / "o.parquet",
                              id_column="id", ray="auto")  # fmt: skip
    frame.drop(columns=["p3"]).to_parquet(tmp_path / "narrow.parquet")
    with pytest.raises(DataError, match="63 columns, but the package takes 64"):
        nimbleml.predict_file(package, tmp_path / "narrow.parquet", tmp_path / "o.parquet",
                              id_column="id", ray="auto")  # fmt: skip
    with pytest.raises(DataError, match="no id column 'key'"):
        nimbleml.predict_file(package, tmp_path / "narrow.parquet", tmp_path / "o.parquet",
                              id_column="key", ray="auto")  # fmt: skip
    np.savez(tmp_path / "x.npz", X=frame.drop(columns=["id"]).to_numpy())
    with pytest.raises(ConfigError, match="on Ray, predict reads"):
        nimbleml.predict_file(package, tmp_path / "x.npz", tmp_path / "o.parquet", ray="auto")
    with pytest.raises(ConfigError, match="workers must be a whole number"):
        nimbleml.predict_file(package, tmp_path / "narrow.parquet", tmp_path / "o.parquet",
                              ray="auto", workers=0)  # fmt: skip
    assert not ray.is_initialized()
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "o.parquet.ray").exists()


def test_ray_matches_the_local_run_rows_in_order(package, cluster, frame, tmp_path):
    """Through the CLI, a Parquet file without ids: Ray's rows come back in the input's order,
    numbered from 0, with the local path's values; only OUT is left."""
    data = tmp_path / "in.parquet"
    frame.drop(columns=["id"]).to_parquet(data, row_group_size=500)
    local = nimbleml.predict_file(package, data, tmp_path / "local.parquet", chunk_rows=400)
    out = tmp_path / "ray.parquet"
    r = CliRunner().invoke(app, ["predict", str(package), "--data", str(data), "--out", str(out),
                                 "--chunk-rows", "400", "--ray", "auto", "--workers", "2",
                                 "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"{len(frame):,} rows on Ray" in r.output
    got, want = pd.read_parquet(out), pd.read_parquet(tmp_path / "local.parquet")
    assert local.rows == len(frame) and got["row"].tolist() == list(range(len(frame)))
    assert got.columns.tolist() == want.columns.tolist()
    # row by row against the local run, which keeps the input's order
    np.testing.assert_allclose(got.drop(columns=["row"]).to_numpy(),
                               want.drop(columns=["row"]).to_numpy(), rtol=1e-5, atol=1e-6)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "local.parquet",
                                                          "ray.parquet"]  # fmt: skip
