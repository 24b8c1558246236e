"""Batch prediction over files (issue 14, part 4): chunks in bounded memory, the same numbers
as the package in memory, row ids kept, an interrupted run resumed without redoing chunks,
bad rows named with their row number and nothing already written lost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import nimbleml
from nimbleml.cli import app
from nimbleml.errors import ConfigError, DataError

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def package(fp32_package):
    return fp32_package


@pytest.fixture
def rows(tmp_path, digits):
    _, Xte, _, _ = digits
    frame = pd.DataFrame(Xte, columns=[f"p{i}" for i in range(64)])
    frame.insert(0, "id", np.arange(len(frame)) * 10 + 7)
    return tmp_path, frame


@pytest.mark.parametrize("src,dst", [(".csv", ".csv"), (".parquet", ".parquet"),
                                     (".csv", ".parquet")])  # fmt: skip
def test_outputs_match_the_package_in_memory_with_row_ids(package, rows, src, dst):
    folder, frame = rows
    data = folder / f"in{src}"
    frame.to_csv(data, index=False) if src == ".csv" else frame.to_parquet(data)
    out = folder / f"out{dst}"
    res = nimbleml.predict_file(package, data, out, chunk_rows=100, batch_size=32,
                                id_column="id")  # fmt: skip
    assert (res.rows, res.chunks, res.resumed_chunks) == (len(frame), 6, 0)
    got = pd.read_csv(out) if dst == ".csv" else pd.read_parquet(out)
    assert got["id"].tolist() == frame["id"].tolist()
    expected = nimbleml.load(package).predict(frame.drop(columns=["id"]).to_numpy(np.float32))
    values = got.drop(columns=["id"]).to_numpy()
    assert values.shape == expected.shape
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)
    assert not out.with_name(out.name + ".parts").exists()


def test_npy_is_read_memory_mapped_and_rows_numbered(package, tmp_path, digits):
    _, Xte, _, _ = digits
    np.save(tmp_path / "X.npy", Xte)
    res = nimbleml.predict_file(package, tmp_path / "X.npy", tmp_path / "o.csv", chunk_rows=128)
    got = pd.read_csv(tmp_path / "o.csv")
    assert got["row"].tolist() == list(range(len(Xte))) and res.chunks == 5
    np.savez(tmp_path / "X.npz", X=Xte)
    seen = []
    nimbleml.predict_file(package, tmp_path / "X.npz", tmp_path / "o2.csv", chunk_rows=128,
                          progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen[-1] == (len(Xte), len(Xte))  # the total read from X's header
    assert pd.read_csv(tmp_path / "o2.csv").equals(got)


def test_an_interrupted_run_resumes_without_redoing_chunks(package, rows):
    folder, frame = rows
    frame.to_csv(folder / "in.csv", index=False)
    out = folder / "out.parquet"

    class Stop(Exception):
        pass

    def stop_after_three(done, _total):
        if done >= 300:
            raise Stop

    with pytest.raises(Stop):
        nimbleml.predict_file(package, folder / "in.csv", out, chunk_rows=100, id_column="id",
                              progress=stop_after_three)  # fmt: skip
    parts = out.with_name(out.name + ".parts")
    # Arrow IPC parts: a Parquet output is encoded once, by the join
    assert sorted(p.name for p in parts.glob("part-*")) == [
        f"part-00000{i}.arrow" for i in range(3)]  # fmt: skip
    assert not out.exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*")}
    res = nimbleml.predict_file(package, folder / "in.csv", out, chunk_rows=100, id_column="id")
    assert res.resumed_chunks == 3 and res.chunks == 6 and res.rows == len(frame)
    assert pd.read_parquet(out)["id"].tolist() == frame["id"].tolist()
    assert not parts.exists() and stamps  # the kept parts were joined, not recomputed


def test_a_bad_value_is_named_with_its_row_and_kept_parts_stay(package, rows):
    folder, frame = rows
    bad = frame.astype(object)
    bad.loc[250, "p3"] = "abc"
    bad.to_csv(folder / "in.csv", index=False)
    out = folder / "out.csv"
    with pytest.raises(DataError, match=r"row 250, column 'p3': 'abc' is not a number"):
        nimbleml.predict_file(package, folder / "in.csv", out, chunk_rows=100, id_column="id")
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.glob("part-*"))) == 2  # rows 0-199 kept for the next run
    frame.to_csv(folder / "in.csv", index=False)  # fixed: another file now, another job
    with pytest.raises(ConfigError, match="unfinished run of another job"):
        nimbleml.predict_file(package, folder / "in.csv", out, chunk_rows=100, id_column="id")
    res = nimbleml.predict_file(package, folder / "in.csv", out, chunk_rows=100,
                                id_column="id", resume=False)  # fmt: skip
    assert res.resumed_chunks == 0 and res.rows == len(frame)


def test_missing_columns_and_options_are_named(package, rows):
    folder, frame = rows
    frame.drop(columns=["p5"]).to_csv(folder / "narrow.csv", index=False)
    with pytest.raises(DataError, match="63 columns, but the package takes 64 features"):
        nimbleml.predict_file(package, folder / "narrow.csv", folder / "o.csv", id_column="id")
    assert sorted(p.name for p in folder.iterdir()) == ["narrow.csv"]  # nothing left behind
    frame.to_csv(folder / "in.csv", index=False)
    with pytest.raises(DataError, match="no id column 'key'"):
        nimbleml.predict_file(package, folder / "in.csv", folder / "o.csv", id_column="key")
    with pytest.raises(ConfigError, match="predict writes .csv, .parquet"):
        nimbleml.predict_file(package, folder / "in.csv", folder / "o.json")
    with pytest.raises(ConfigError, match="chunk_rows must be a whole number"):
        nimbleml.predict_file(package, folder / "in.csv", folder / "o.csv", chunk_rows=0)
    with pytest.raises(ConfigError, match="is the input file"):
        nimbleml.predict_file(package, folder / "in.csv", folder / "in.csv")


def test_the_predict_command(package, rows, monkeypatch):
    folder, frame = rows
    frame.to_parquet(folder / "in.parquet")
    monkeypatch.chdir(folder)
    res = CliRunner().invoke(app, ["predict", str(package), "--data", "in.parquet", "--out",
                                   "out.csv", "--id-column", "id", "--chunk-rows", "200", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"{len(frame):,} rows in 3 chunk(s)" in res.output
    assert pd.read_csv(folder / "out.csv").shape[0] == len(frame)
