"""Ed25519 keys and the signature checks a package load runs (package.py calls them); signing
a package and verifying one from the command line are in signing.py, above the package layer.
See the trust model in docs/package-format.md.

The manifest holds the sha256 of every file and loading checks them, so one Ed25519
signature over the exact bytes of manifest.json covers every file: change a model and its
checksum no longer matches; change the checksum and the signature no longer matches. The
signature lives in ``signature.json`` beside the manifest, which does not list it.

Why not the OpenSSF ``model-signing`` library: its key-based mode takes ECDSA keys only, and
it depends on sigstore, tuf, pydantic, protobuf, rfc3161-client and blake3 (34 packages with
theirs, 15 MB of wheels) for what is here one call into ``cryptography``; it also hashes
every file again, which the manifest has already done.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ._deps import require
from .errors import ConfigError, PackageError

SIGNATURE = "signature.json"
ALGORITHM = "ed25519"
FORMAT = "nimbleml-signature"
# Signed: this prefix, then manifest.json byte for byte. The prefix keeps a signature made
# with the same key for something else from passing as a package signature.
DOMAIN = b"nimbleml package signature v1\n"
PASSPHRASE_ENV = "NIMBLEML_KEY_PASSPHRASE"

# a key as a path to a PEM file, PEM bytes, or a cryptography Ed25519 key object
Key = Any


def _crypto() -> Any:
    require("cryptography", "signing packages")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def key_id(public: Any) -> str:
    """``sha256:`` and the hex digest of the raw 32-byte public key: the name of a key in
    signature.json and in messages."""
    serialization, _ = _crypto()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _short(kid: str) -> str:
    return kid[: len("sha256:") + 16]


def _pem(key: Key, role: str) -> tuple[bytes, str]:
    if isinstance(key, bytes):
        return key, f"the {role} key bytes"
    if not isinstance(key, str | os.PathLike):
        raise ConfigError(
            f"a {role} key is a PEM file path, PEM bytes or an Ed25519 key object, "
            f"not {type(key).__name__}"
        )
    path = Path(key)
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise ConfigError(f"{role} key {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {role} key {path}: {exc.strerror}") from None


def public_key(key: Key) -> Any:
    """An Ed25519 public key from a PEM file, PEM bytes or a key object; ConfigError
    otherwise (a private key too: it stays with whoever signs)."""
    serialization, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError("verify with the public key, not the private key")
    data, where = _pem(key, "public")
    if b"PRIVATE KEY" in data:
        raise ConfigError(
            f"{where} holds a private key; verify with the public key (nimbleml keygen wrote "
            "it beside the private one as NAME.pub.pem), the private key stays with the signer"
        )
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(
            f"{where} is not a PEM public key; give the NAME.pub.pem that nimbleml keygen wrote"
        ) from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise ConfigError(
            f"{where} is a {type(loaded).__name__.lstrip('_')}, not an Ed25519 key; "
            "nimbleml signs with Ed25519 keys from nimbleml keygen"
        )
    return loaded


def private_key(key: Key, password: bytes | None = None) -> Any:
    """An Ed25519 private key from a PEM file, PEM bytes or a key object; ConfigError
    otherwise. ``password`` for an encrypted PEM (default: $NIMBLEML_KEY_PASSPHRASE)."""
    serialization, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    data, where = _pem(key, "private")
    if b"PRIVATE KEY" not in data:
        raise ConfigError(
            f"{where} is not a PEM private key; sign with the private key from nimbleml keygen "
            "(the .pub.pem file is for verifying)"
        )
    if password is None and os.environ.get(PASSPHRASE_ENV):
        password = os.environ[PASSPHRASE_ENV].encode()
    try:
        loaded = serialization.load_pem_private_key(data, password=password)
    except TypeError:  # encrypted without a password, or a password for a plain key
        raise ConfigError(
            f"{where} is encrypted: set {PASSPHRASE_ENV} to its passphrase"
            if password is None
            else f"{where} is not encrypted: give no passphrase (unset {PASSPHRASE_ENV})"
        ) from None
    except ValueError:
        raise ConfigError(
            f"cannot read {where}: not an Ed25519 PEM key or a wrong passphrase"
        ) from None
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ConfigError(
            f"{where} is a {type(loaded).__name__.lstrip('_')}, not an Ed25519 key; "
            "make one with nimbleml keygen"
        )
    return loaded


def generate_key(
    private_path: str | Path, public_path: str | Path | None = None, password: bytes | None = None
) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair: the private key as PKCS#8 PEM readable by its owner
    only (0600; encrypted when ``password`` is given), the public key as PEM (default:
    ``NAME.pub.pem`` beside it). Existing files are never overwritten. Returns both paths
    and the key id."""
    serialization, ed25519 = _crypto()
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else _public_beside(private_path)
    if private_path.resolve() == public_path.resolve():
        raise ConfigError("the private and the public key need two different paths")
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; choose another path (a key is never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL: no race with another writer; 0o600 from the start, never readable by others
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path, key_id(key.public_key())


def _public_beside(private_path: Path) -> Path:
    stem = private_path.name.removesuffix(".pem")
    return private_path.with_name(f"{stem}.pub.pem")


def unlisted_files(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """Files in the package folder that its manifest does not list (beside manifest.json and
    signature.json): a signature says nothing about them."""
    listed = {Path(entry["path"]).as_posix() for entry in manifest["files"]}
    listed |= {"manifest.json", SIGNATURE}
    found = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir())
    return sorted(name for name in found if name not in listed)


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:3]) + (
        f" and {len(names) - 3} more" if len(names) > 3 else ""
    )
    return f"file{'s' if len(names) > 1 else ''} {shown} {'are' if len(names) > 1 else 'is'}"


def check_signature(directory: Path, manifest_bytes: bytes, key: Key) -> str:
    """PackageError unless ``signature.json`` in ``directory`` is an Ed25519 signature by
    ``key`` over ``manifest_bytes`` (the manifest as read, once, by the loader). Returns the
    key id. The files are then checked against the manifest by the loader."""
    public = public_key(key)
    expected = key_id(public)
    name = directory.name
    path = directory / SIGNATURE
    if not path.is_file():
        raise PackageError(
            f"{name} is not signed (no {SIGNATURE}), and a verify key was given; ask its "
            "author to sign it (nimbleml sign), or load it without verify if you trust it"
        )
    try:
        record = json.loads(path.read_text())
        if record.get("algorithm") != ALGORITHM:
            raise PackageError(
                f"{name}: {SIGNATURE} uses algorithm {record.get('algorithm')!r}; "
                f"this nimbleml verifies {ALGORITHM} signatures only"
            )
        signature = base64.b64decode(record["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise PackageError(
            f"{name}: {SIGNATURE} is damaged (not a nimbleml signature record); have the "
            "package signed again"
        ) from None
    signer = record.get("key_id")
    if signer != expected:
        raise PackageError(
            f"{name} is signed by key {_short(str(signer))}…, not by the key you gave "
            f"({_short(expected)}…); get the signer's public key, or have the package "
            "signed with yours"
        )
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(signature, DOMAIN + manifest_bytes)
    except InvalidSignature:
        if record.get("manifest_sha256") != hashlib.sha256(manifest_bytes).hexdigest():
            raise PackageError(
                f"{name}: manifest.json does not match its signature: it was changed after "
                f"the package was signed, or {SIGNATURE} comes from another package; do not "
                "use this package (re-sign it if you made the change)"
            ) from None
        raise PackageError(
            f"{name}: the signature in {SIGNATURE} is not valid for this manifest and key "
            "(it was altered); do not use this package"
        ) from None
    return expected


def check_complete(directory: Path, manifest: dict[str, Any]) -> None:
    """PackageError when a signed package holds files its manifest does not list: the
    signature covers exactly what the manifest lists (as the OpenSSF model signing
    specification refuses unsigned files by default)."""
    extra = unlisted_files(directory, manifest)
    if extra:
        raise PackageError(
            f"{directory.name}: {_names(extra)} not covered by the signature (not listed in "
            "the manifest); remove it, or ask the author for the package as signed"
        )
