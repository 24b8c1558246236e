import numpy as np
import pytest

from nimbleml.errors import DataError
from nimbleml.inputs import (
    TensorSpec,
    as_feeds,
    batch_size,
    cast_to_specs,
    check_shapes,
    load_data,
    rows,
)


def test_as_feeds_accepts_array_tuple_and_dict():
    a, b = np.zeros((2, 3)), np.ones((2, 4))
    assert as_feeds(a, ["x"])["x"] is a
    assert set(as_feeds((a, b), ["x", "y"])) == {"x", "y"}
    assert as_feeds({"y": b, "x": a}, ["x", "y"])["y"] is b


def test_as_feeds_names_what_is_missing_and_unexpected():
    with pytest.raises(DataError, match=r"missing \['y'\], unexpected \['z'\]"):
        as_feeds({"x": np.zeros(1), "z": np.zeros(1)}, ["x", "y"])
    with pytest.raises(DataError, match="takes 2 inputs"):
        as_feeds(np.zeros((1, 2)), ["x", "y"])


def test_batch_size_disagreement_is_an_error():
    with pytest.raises(DataError, match="disagree"):
        batch_size({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})


def test_rows_wraps_around():
    out = rows({"x": np.arange(3)}, 5)
    assert out["x"].tolist() == [0, 1, 2, 0, 1]


def test_cast_and_shape_checks():
    spec = [TensorSpec("x", "float32", ("batch", 4))]
    assert cast_to_specs({"x": np.zeros((2, 4))}, spec)["x"].dtype == np.float32
    with pytest.raises(DataError, match="dimension 1 must be 4"):
        check_shapes({"x": np.zeros((2, 5))}, spec)
    with pytest.raises(DataError, match="rank"):
        check_shapes({"x": np.zeros(4)}, spec)
    with pytest.raises(DataError, match="cannot become"):
        cast_to_specs({"x": np.array([["a"] * 4])}, spec)


def test_load_data_formats(tmp_path):
    X, y = np.random.rand(5, 3).astype(np.float32), np.arange(5)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X2, y2 = load_data(str(tmp_path / "d.npz"))
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    np.savez(
        tmp_path / "named.npz", input_ids=np.zeros((2, 3), np.int64), attention_mask=np.ones((2, 3))
    )
    named, none = load_data(str(tmp_path / "named.npz"))
    assert set(named) == {"input_ids", "attention_mask"} and none is None
    np.save(tmp_path / "x.npy", X)
    assert np.array_equal(load_data(str(tmp_path / "x.npy"))[0], X)
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    Xc, yc = load_data(str(tmp_path / "d.csv"), target="label")
    assert Xc.shape == (2, 2) and yc.tolist() == [0, 1]


def test_load_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(str(tmp_path / "nope.npz"))
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="target column 'label' is not in"):
        load_data(str(tmp_path / "d.csv"), target="label")
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    with pytest.raises(DataError, match="numbers only"):
        load_data(str(tmp_path / "bad.csv"))
    (tmp_path / "d.txt").write_text("")
    with pytest.raises(DataError, match="unknown data format"):
        load_data(str(tmp_path / "d.txt"))


def test_unreadable_numpy_files_are_one_line_errors(tmp_path):
    """Garbage, a broken zip, or object arrays (which would need unpickling): a DataError
    naming the file, never numpy's pickle message or a traceback (issue 11, item 10)."""
    (tmp_path / "garbage.npz").write_bytes(b"not numpy at all")
    (tmp_path / "garbage.npy").write_bytes(b"xx")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    np.savez(tmp_path / "objects.npz", X=np.array(["a", "b"], dtype=object))
    for name in ("garbage.npz", "garbage.npy", "broken.npz"):
        with pytest.raises(DataError, match=rf"{name} is not a numpy .npy/.npz file") as info:
            load_data(str(tmp_path / name))
        assert "\n" not in str(info.value) and "pickle" not in str(info.value)
    with pytest.raises(DataError, match="objects.npz holds Python objects"):
        load_data(str(tmp_path / "objects.npz"))


def test_the_cli_says_it_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from nimbleml.cli import app

    (tmp_path / "garbage.npz").write_bytes(b"not numpy at all")
    (tmp_path / "m.onnx").write_bytes(b"")
    out = CliRunner().invoke(
        app, ["bench", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "garbage.npz")]
    )
    assert out.exit_code == 2 and out.output.count("\n") == 1
    assert "garbage.npz is not a numpy" in out.output
