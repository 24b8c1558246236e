"""OpenVINO packages: every file checksummed and signed, the runtime recorded, inspect, the
CLI, and the fallback to the ONNX baseline where OpenVINO is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("openvino")

import nimbleml
from nimbleml.cli import app
from nimbleml.errors import PackageError
from nimbleml.models.openvino_model import OpenVinoModel
from nimbleml.package import check_manifest
from nimbleml.signing import generate_key, sign_package


@pytest.fixture
def copy(tmp_path, ov_packages):
    """A copy of the fp32 OpenVINO package to damage."""
    return shutil.copytree(ov_packages["fp32"], tmp_path / "m.nimble")


def test_the_ir_and_its_weights_are_listed_and_checksummed(ov_packages):
    m = json.loads((ov_packages["int8"] / "manifest.json").read_text())
    assert m["model"]["path"] == "model.xml"
    assert m["model"]["files"] == ["model.xml", "model.bin"]
    assert {f["path"] for f in m["files"]} == {"model.xml", "model.bin", "baseline.onnx"}
    on_disk = sum((ov_packages["int8"] / f).stat().st_size for f in m["model"]["files"])
    assert m["model"]["size_bytes"] == on_disk == nimbleml.load(ov_packages["int8"]).size_bytes()


def test_a_changed_bin_is_caught_on_load(copy):
    weights = bytearray((copy / "model.bin").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (copy / "model.bin").write_bytes(bytes(weights))
    with pytest.raises(PackageError, match="file 'model.bin' was altered"):
        nimbleml.load(copy)
    (copy / "model.bin").unlink()
    with pytest.raises(PackageError, match="file 'model.bin' is missing"):
        nimbleml.load(copy)


def test_a_manifest_that_drops_the_bin_from_its_files_is_refused(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["files"] = [f for f in m["files"] if f["path"] != "model.bin"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match="model file 'model.bin' is not among the files"):
        nimbleml.load(copy)


def test_a_signature_covers_the_weights(copy, tmp_path, digits):
    private, public, _ = generate_key(tmp_path / "k.pem")
    sign_package(copy, private)
    pkg = nimbleml.load(copy, verify=public)
    assert isinstance(pkg.model, OpenVinoModel)
    assert np.allclose(pkg.predict(digits[1][:4]), pkg.baseline(digits[1][:4])[0], atol=1e-5)
    weights = bytearray((copy / "model.bin").read_bytes())
    weights[-1] ^= 0x01
    (copy / "model.bin").write_bytes(bytes(weights))
    with pytest.raises(PackageError, match="model.bin"):
        nimbleml.load(copy, verify=public)


def test_old_manifests_without_runtime_keys_still_validate(ov_packages):
    m = json.loads((ov_packages["fp32"] / "manifest.json").read_text())
    check_manifest(m, "this manifest")
    del m["runtime"], m["model"]["files"]
    check_manifest(m, "an older manifest")
    m["runtime"] = {"engine": 3}
    with pytest.raises(PackageError, match="runtime/engine"):
        check_manifest(m, "a bad manifest")


def test_inspect_shows_the_runtime_and_the_ir_files(ov_packages):
    out = CliRunner().invoke(app, ["inspect", str(ov_packages["int8"])])
    assert out.exit_code == 0, out.output
    assert "runtime: openvino (chosen by the caller)" in out.output
    assert "model files: model.xml, model.bin; baseline: baseline.onnx" in out.output
    assert "step openvino-int8 (onnx)" in out.output


def test_cli_compress_names_bad_runtime_values(tmp_path):
    out = CliRunner().invoke(app, ["compress", "m.onnx", "-o", str(tmp_path / "o"),
                                   "--runtime", "tvm"])  # fmt: skip
    assert out.exit_code == 2 and "choose one of: onnxruntime, openvino" in out.output
    out = CliRunner().invoke(app, ["compress", "m.onnx", "-o", str(tmp_path / "o"),
                                   "--runtime", "openvino", "--quantize", "bf16"])  # fmt: skip
    assert out.exit_code == 2, out.output
    assert "--runtime openvino takes --quantize none (float32) or 'int8'" in out.output
    assert "not --quantize bf16" in out.output


def test_cli_compress_with_the_openvino_runtime(tmp_path, mlp_onnx, digits):
    (tmp_path / "m.onnx").write_bytes(mlp_onnx.data)
    np.savez(tmp_path / "val.npz", X=digits[1], y=digits[3])
    out = CliRunner().invoke(app, ["compress", str(tmp_path / "m.onnx"), "-o",
                                   str(tmp_path / "m.nimble"), "--runtime", "openvino",
                                   "--quantize", "none", "--val", str(tmp_path / "val.npz"), "-q"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "recipe: openvino" in out.output
    assert (tmp_path / "m.nimble" / "model.bin").is_file()


def test_without_openvino_the_package_runs_its_onnx_baseline(ov_packages, digits, tmp_path):
    """A real process where ``import openvino`` fails, as where the extra is not installed."""
    X = digits[1][:5]
    np.save(tmp_path / "x.npy", X)
    script = textwrap.dedent(f"""
        import sys, warnings, json
        sys.modules["openvino"] = None  # import openvino -> ImportError
        sys.modules["nncf"] = None
        import numpy as np, nimbleml
        from nimbleml.models.openvino_model import openvino_missing
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pkg = nimbleml.load({str(ov_packages["int8"])!r})
        np.save({str(tmp_path / "y.npy")!r}, pkg.predict(np.load({str(tmp_path / "x.npy")!r})))
        print(json.dumps({{"missing": openvino_missing(), "model": type(pkg.model).__name__,
                           "warnings": [(w.category.__name__, str(w.message)) for w in caught]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["missing"] == "not installed: pip install 'nimbleml[openvino]'"
    assert result["model"] == "OnnxModel"
    [(category, message)] = result["warnings"]
    assert category == "FallbackWarning"
    assert "pip install 'nimbleml[openvino]'" in message and "using its baseline" in message
    baseline = nimbleml.load(ov_packages["int8"]).baseline
    assert np.allclose(np.load(tmp_path / "y.npy"), baseline(X)[0], atol=1e-6)
