"""The .nimble package: manifest, checksums, save/load, fallback."""

import json
import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import nimbleml
from nimbleml.errors import FallbackWarning, PackageError
from nimbleml.package import sha256

REQUIRED = {
    "schema", "nimbleml_version", "created_at", "source", "inputs", "outputs", "recipe",
    "validation", "benchmark", "machine", "files", "model", "baseline",
}  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory, mlp, digits):
    _, Xte, _, yte = digits
    pkg = nimbleml.compress(mlp, quantize="int8", val=(Xte, yte), benchmark_time_s=0.05)
    return pkg.save(tmp_path_factory.mktemp("pkg") / "mlp.nimble")


def copy(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "copy.nimble")


def test_manifest_has_every_section(saved):
    m = json.loads((saved / "manifest.json").read_text())
    assert set(m) >= REQUIRED
    assert m["schema"] == 1
    assert m["inputs"][0] == {"name": "input", "dtype": "float32", "shape": ["batch", 64]}
    assert {f["path"] for f in m["files"]} == {"model.onnx", "baseline.onnx"}
    assert m["machine"]["logical_cores"] >= 1 and "onnxruntime" in m["machine"]["libraries"]
    for f in m["files"]:
        assert sha256(saved / f["path"]) == f["sha256"]


def test_load_roundtrip_predicts_the_same(saved, digits):
    pkg = nimbleml.load(saved)
    Xte = digits[1]
    assert pkg.predict(Xte).shape == (len(Xte), 10)
    assert set(pkg.run(Xte)) == {"output"}
    assert np.allclose(nimbleml.load(saved).predict(Xte), pkg.predict(Xte))
    assert pkg.size_bytes() == (saved / "model.onnx").stat().st_size


def test_altered_file_is_named(saved, tmp_path):
    pkg_dir = copy(saved, tmp_path)
    with open(pkg_dir / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(PackageError, match="'model.onnx' was altered"):
        nimbleml.load(pkg_dir)


def test_missing_file_is_named(saved, tmp_path):
    pkg_dir = copy(saved, tmp_path)
    (pkg_dir / "baseline.onnx").unlink()
    with pytest.raises(PackageError, match="'baseline.onnx' is missing"):
        nimbleml.load(pkg_dir)


def test_not_a_package_and_bad_manifest(tmp_path, saved):
    with pytest.raises(PackageError, match="no manifest.json"):
        nimbleml.load(tmp_path)
    pkg_dir = copy(saved, tmp_path)
    (pkg_dir / "manifest.json").write_text("{broken")
    with pytest.raises(PackageError, match="not valid JSON"):
        nimbleml.load(pkg_dir)
    (pkg_dir / "manifest.json").write_text(json.dumps({"schema": 99}))
    with pytest.raises(PackageError, match="schema 99"):
        nimbleml.load(pkg_dir)


def test_model_that_cannot_run_here_falls_back_with_a_warning(saved, tmp_path, digits):
    """A model needing an operator this runtime lacks: the baseline serves instead."""
    pkg_dir = copy(saved, tmp_path)
    node = helper.make_node("NoSuchOp", ["input"], ["output"], domain="com.example")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    onnx.save(model, pkg_dir / "model.onnx")
    manifest = json.loads((pkg_dir / "manifest.json").read_text())
    for f in manifest["files"]:
        f["sha256"] = sha256(pkg_dir / f["path"])
    (pkg_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(FallbackWarning, match="cannot run here"):
        pkg = nimbleml.load(pkg_dir)
    assert pkg.using_baseline and "NoSuchOp" in pkg.fallback_reason
    assert pkg.predict(digits[1]).shape == (len(digits[1]), 10)


def test_save_refuses_to_overwrite_a_non_package(saved, tmp_path):
    pkg = nimbleml.load(saved)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    with pytest.raises(PackageError, match="not a .nimble package"):
        pkg.save(tmp_path / "precious")
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"


def test_optimize_writes_the_manifest_compress_writes_and_inspect_reads_it(mlp, digits, tmp_path):
    """One schema for both writers (issue 11, item 1: inspect crashed on every optimize
    package, whose benchmark section had another layout)."""
    from typer.testing import CliRunner

    from nimbleml.cli import app
    from nimbleml.package import check_manifest

    _, Xte, _, yte = digits
    result = nimbleml.optimize(mlp, (Xte, yte), time_budget_s=20, timing_s=0.05, prune=False)
    path = result.best.save(tmp_path / "best.nimble")
    manifest = json.loads((path / "manifest.json").read_text())
    check_manifest(manifest, "optimize's manifest")
    ((key, entry),) = manifest["benchmark"].items()
    assert key == f"batch_{entry['package']['batch_size']}"
    assert entry["speedup_p50"] == pytest.approx(
        entry["original"]["p50_ms"] / entry["package"]["p50_ms"]
    )
    out = CliRunner().invoke(app, ["inspect", str(path)])
    assert out.exit_code == 0, out.output
    assert "batch 1: p50" in out.output and "faster" in out.output


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda m: m["benchmark"].update(objective="latency"), "benchmark"),
        (lambda m: m["files"][0].pop("sha256"), "files/0"),
        (lambda m: m["inputs"][0].update(shape="64"), "inputs/0/shape"),
        (lambda m: m.pop("validation"), "(top level)"),
    ],
    ids=["benchmark-layout", "file-without-checksum", "shape-not-a-list", "no-validation"],
)
def test_a_manifest_off_the_schema_is_refused_naming_the_place(saved, tmp_path, edit, where):
    target = copy(saved, tmp_path)
    manifest = json.loads((target / "manifest.json").read_text())
    edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=re.escape(f"at '{where}'")):
        nimbleml.load(target)


def _point_model_at(target, path_text, file_path):
    """Edit a package so that its model (and its checksummed files entry) is ``path_text``,
    with the right sha256 of ``file_path``: a crafted package, not a damaged one."""
    manifest = json.loads((target / "manifest.json").read_text())
    old = manifest["model"]["path"]
    manifest["model"]["path"] = path_text
    for entry in manifest["files"]:
        if entry["path"] == old:
            entry.update(path=path_text, sha256=sha256(file_path))
    (target / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "unlisted"])
def test_a_package_cannot_point_outside_itself(saved, tmp_path, how):
    """Checksums in the same manifest prove nothing against a crafted package: every path
    must stay inside the package folder (issue 11, security)."""
    target = copy(saved, tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.copy(target / "model.onnx", outside)
    if how == "dotdot":
        _point_model_at(target, "../outside.onnx", outside)
        message = "points outside the package"
    elif how == "absolute":
        _point_model_at(target, str(outside), outside)
        message = "points outside the package"
    elif how == "symlink":
        (target / "link.onnx").symlink_to(outside)
        _point_model_at(target, "link.onnx", outside)
        message = "leads outside the package"
    else:
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["model"]["path"] = "other.onnx"
        (target / "manifest.json").write_text(json.dumps(manifest))
        message = "not among the files the manifest checksums"
    with pytest.raises(PackageError, match=message):
        nimbleml.load(target)
