"""Signed packages (issue 11, security): keygen, sign, load(verify=...), the verify verb, and
serve --verify-key refusing what its key did not sign."""

import base64
import json
import os
import shutil
import stat

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

import nimbleml
from nimbleml.cli import app as cli
from nimbleml.errors import ConfigError, PackageError
from nimbleml.signing import SIGNATURE, generate_key, sign_package, verify_package
from tests._net import free_port


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory, iris):
    from sklearn.linear_model import LogisticRegression

    X, y = iris
    model = LogisticRegression(max_iter=500).fit(X, y)
    pkg = nimbleml.compress(model, val=(X, y), benchmark_time_s=0.01)
    return pkg.save(tmp_path_factory.mktemp("signing") / "iris.nimble")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(private, public) of the signer, and the public key of someone else."""
    folder = tmp_path_factory.mktemp("keys")
    private, public, _ = generate_key(folder / "signer.pem")
    _, other, _ = generate_key(folder / "other.pem")
    return private, public, other


@pytest.fixture
def signed(tmp_path, unsigned, keys):
    path = shutil.copytree(unsigned, tmp_path / "signed.nimble")
    sign_package(path, keys[0])
    return path


def edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_a_signed_package_loads_with_its_public_key(signed, keys, iris):
    private, public, _ = keys
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600  # the private key is the owner's only
    assert public.name == "signer.pub.pem" and b"PUBLIC KEY" in public.read_bytes()
    record = json.loads((signed / SIGNATURE).read_text())
    assert record["algorithm"] == "ed25519" and record["key_id"].startswith("sha256:")
    manifest = json.loads((signed / "manifest.json").read_text())
    assert SIGNATURE not in {f["path"] for f in manifest["files"]}  # beside the manifest

    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    X, _ = iris
    reference = nimbleml.load(signed).predict(X[:5])  # without verify: unchanged behaviour
    for key in (public, str(public), public.read_bytes(), load_pem_public_key(public.read_bytes())):
        pkg = nimbleml.load(signed, verify=key)
        assert np.array_equal(pkg.predict(X[:5]), reference)
    saved = nimbleml.load(signed, verify=public).save(signed.parent / "copy.nimble")
    assert nimbleml.load(saved, verify=public).manifest == manifest  # saving keeps it signed


def replace_model(path):
    """An attacker's model in place of the signed one, its checksum updated to match."""
    model = path / "model.onnx"
    model.write_bytes((path / "baseline.onnx").read_bytes())

    def update(manifest):
        for entry in manifest["files"]:
            if entry["path"] == "model.onnx":
                entry["sha256"] = nimbleml.package.sha256(model)

    edit_manifest(path, update)


def swap_signature(path, private):
    """The signature of another package signed by the same key."""
    twin = shutil.copytree(path, path.parent / "twin.nimble")
    edit_manifest(twin, lambda m: m.update(created_at="2001-01-01T00:00:00+00:00"))
    sign_package(twin, private)
    shutil.copy(twin / SIGNATURE, path / SIGNATURE)


def forge_signature(path, private):
    record = json.loads((path / SIGNATURE).read_text())
    raw = bytearray(base64.b64decode(record["signature"]))
    raw[0] ^= 1  # one bit of the signature, the key id left as it was
    record["signature"] = base64.b64encode(bytes(raw)).decode()
    (path / SIGNATURE).write_text(json.dumps(record))


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda p, k: (p / "model.onnx").write_bytes(b"not the model"), "'model.onnx' was altered"),
        (
            lambda p, k: edit_manifest(p, lambda m: m["validation"].update(package=1.0)),
            "manifest.json does not match its signature",
        ),
        (lambda p, k: replace_model(p), "manifest.json does not match its signature"),
        (swap_signature, "comes from another package"),
        (forge_signature, "signature.json is not valid for this manifest and key (it was altered)"),
        (lambda p, k: (p / SIGNATURE).unlink(), "signed.nimble is not signed (no signature.json)"),
        (lambda p, k: (p / SIGNATURE).write_text("{oops"), "signature.json is damaged"),
        (lambda p, k: (p / "extra.onnx").write_bytes(b"x"), "'extra.onnx' is not covered"),
    ],
    ids=[
        "model-file",
        "manifest",
        "model+checksum",
        "swapped",
        "forged",
        "missing",
        "damaged",
        "extra",
    ],
)
def test_a_changed_package_is_refused_naming_the_problem(signed, keys, tamper, message):
    private, public, _ = keys
    tamper(signed, private)
    with pytest.raises(PackageError) as info:
        nimbleml.load(signed, verify=public)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_another_key_or_no_signature_is_refused(signed, unsigned, keys):
    _, public, other = keys
    with pytest.raises(PackageError, match=r"signed by key sha256:[0-9a-f]{16}…, not by the key"):
        nimbleml.load(signed, verify=other)
    with pytest.raises(PackageError, match="iris.nimble is not signed"):
        nimbleml.load(unsigned, verify=public)
    nimbleml.load(unsigned)  # without verify, an unsigned package loads as before


def test_keys_are_checked_and_never_overwritten(tmp_path, signed, keys, monkeypatch):
    private, public, _ = keys
    with pytest.raises(ConfigError, match="holds a private key; verify with the public key"):
        nimbleml.load(signed, verify=private)
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        sign_package(signed, public)
    with pytest.raises(ConfigError, match="does not exist"):
        nimbleml.load(signed, verify=tmp_path / "nope.pem")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError, match="is not a PEM public key"):
        nimbleml.load(signed, verify=tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="exists; choose another path"):
        generate_key(private)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = p256.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ConfigError, match="PublicKey, not an Ed25519 key"):
        nimbleml.load(signed, verify=pem)
    monkeypatch.setenv("NIMBLEML_KEY_PASSPHRASE", "s3cret")
    with pytest.raises(ConfigError, match="is not encrypted: give no passphrase"):
        sign_package(signed, private)
    monkeypatch.delenv("NIMBLEML_KEY_PASSPHRASE")
    # an encrypted private key: the passphrase comes from the environment
    locked, locked_pub, _ = generate_key(tmp_path / "locked.pem", password=b"s3cret")
    assert b"ENCRYPTED" in locked.read_bytes()
    with pytest.raises(ConfigError, match="is encrypted: set NIMBLEML_KEY_PASSPHRASE"):
        sign_package(signed, locked)
    monkeypatch.setenv("NIMBLEML_KEY_PASSPHRASE", "wrong")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        sign_package(signed, locked)
    monkeypatch.setenv("NIMBLEML_KEY_PASSPHRASE", "s3cret")
    sign_package(signed, locked)
    assert verify_package(signed, locked_pub)[1].startswith("sha256:")


def test_only_an_intact_package_is_signed(tmp_path, unsigned, keys):
    private = keys[0]
    extra = shutil.copytree(unsigned, tmp_path / "extra.nimble")
    (extra / "notes.txt").write_text("hello")
    with pytest.raises(PackageError, match="'notes.txt' is not listed in the manifest"):
        sign_package(extra, private)
    broken = shutil.copytree(unsigned, tmp_path / "broken.nimble")
    (broken / "model.onnx").write_bytes(b"changed")
    with pytest.raises(PackageError, match="was altered"):
        sign_package(broken, private)
    assert not (extra / SIGNATURE).exists() and not (broken / SIGNATURE).exists()


def test_cli_keygen_sign_verify(tmp_path, unsigned):
    runner = CliRunner()
    package = shutil.copytree(unsigned, tmp_path / "iris.nimble")
    key = tmp_path / "team.pem"
    made = runner.invoke(cli, ["keygen", str(key)])
    assert made.exit_code == 0, made.output
    assert "team.pub.pem (public" in made.output and "key id sha256:" in made.output
    again = runner.invoke(cli, ["keygen", str(key)])
    assert again.exit_code == 2 and again.output.count("\n") == 1 and "exists" in again.output
    pub = tmp_path / "team.pub.pem"

    unsigned_check = runner.invoke(cli, ["verify", str(package), "--key", str(pub)])
    assert unsigned_check.exit_code == 2 and unsigned_check.output.count("\n") == 1
    assert unsigned_check.output.startswith("error: iris.nimble is not signed")

    signing = runner.invoke(cli, ["sign", str(package), "--key", str(key)])
    assert signing.exit_code == 0 and signing.output.startswith("signed iris.nimble with key")
    ok = runner.invoke(cli, ["verify", str(package), "--key", str(pub)])
    assert ok.exit_code == 0 and ok.output.count("\n") == 1, ok.output
    assert ok.output.startswith("ok: iris.nimble is signed by key sha256:")

    wrong_key = runner.invoke(cli, ["sign", str(package), "--key", str(pub)])
    assert wrong_key.exit_code == 2 and "is not a PEM private key" in wrong_key.output
    (package / "model.onnx").write_bytes(b"tampered")
    bad = runner.invoke(cli, ["verify", str(package), "--key", str(pub)])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1
    assert "error: iris.nimble: file 'model.onnx' was altered" in bad.output


def infer(url, name, x):
    body = {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}  # fmt: skip
    return httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)


def test_serve_refuses_what_its_key_did_not_sign(tmp_path, unsigned, keys):
    _, public, _ = keys

    def serve(*args):
        return CliRunner().invoke(cli, ["serve", *args, "--port", str(free_port())])

    refused = serve(str(unsigned), "--verify-key", str(public))
    assert refused.exit_code == 2 and refused.output.count("\n") == 1, refused.output
    assert "model 'iris': iris.nimble is not signed" in refused.output
    assert "serving" not in refused.output
    (tmp_path / "junk.pem").write_text("junk")
    bad_key = serve(str(unsigned), "--verify-key", str(tmp_path / "junk.pem"))
    assert bad_key.exit_code == 2 and "is not a PEM public key" in bad_key.output
    from nimbleml.serve import ServeConfig, create_app
    from nimbleml.serve.launch import make_spec

    settings = tmp_path / "serve.yaml"  # the YAML key, as every serve setting
    settings.write_text(f"models: [{unsigned}]\nverify-key: {public}\n")
    with pytest.raises(ConfigError, match="model 'iris': iris.nimble is not signed"):
        make_spec({}, settings)

    with pytest.raises(ConfigError, match="does not exist"):
        ServeConfig(verify_key=str(tmp_path / "nope.pem"))
    # a Package opened without verify is opened again, verified, by a verifying server

    with pytest.raises(PackageError, match="is not signed"):
        create_app({"iris": nimbleml.load(unsigned)}, ServeConfig(verify_key=str(public)))


def test_serve_with_a_verify_key_serves_and_reloads_signed_packages(
    tmp_path, signed, unsigned, keys, iris
):
    from tests.serve.conftest import ServeProcess

    private, public, _ = keys
    X, _ = iris
    newer = shutil.copytree(signed, tmp_path / "newer.nimble")
    edit_manifest(newer, lambda m: m.update(created_at="2030-01-01T00:00:00+00:00"))
    sign_package(newer, private)
    args = [f"iris={signed}", "--verify-key", str(public), "--allow-reload"]
    with ServeProcess(args, tmp_path / "serve.log") as s:
        assert "serving iris" in s.log()
        first = infer(s.url, "iris", X[:2])
        assert first.status_code == 200, first.text

        def load(path):
            return httpx.post(f"{s.url}/v2/repository/models/iris/load", timeout=60,
                              json={"parameters": {"path": str(path)}})  # fmt: skip

        refused = load(unsigned)
        assert refused.status_code == 409, refused.text
        assert (
            "keeps serving" in refused.json()["error"]
            and "is not signed" in refused.json()["error"]
        )
        assert infer(s.url, "iris", X[:2]).json()["model_version"] == first.json()["model_version"]
        accepted = load(newer)
        assert accepted.status_code == 200, accepted.text
        assert infer(s.url, "iris", X[:2]).json()["model_version"] == "2030-01-01T00:00:00+00:00"
