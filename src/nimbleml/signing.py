"""Signed packages: who made a package, not only that it is intact. Signing a package folder
and verifying one without opening its models; the keys and the checks themselves are in
signature.py (below the package layer, which runs them on every signed load). See the trust
model in docs/package-format.md."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import PackageError
from .package import MANIFEST, read_manifest
from .signature import (
    ALGORITHM,
    DOMAIN,
    FORMAT,
    PASSPHRASE_ENV,
    SIGNATURE,
    Key,
    _names,
    check_complete,
    check_signature,
    generate_key,
    key_id,
    private_key,
    public_key,
    unlisted_files,
)

__all__ = [
    "PASSPHRASE_ENV",
    "SIGNATURE",
    "check_complete",
    "check_signature",
    "generate_key",
    "key_id",
    "private_key",
    "public_key",
    "sign_package",
    "unlisted_files",
    "verify_package",
]


def sign_package(directory: str | Path, key: Key, password: bytes | None = None) -> dict[str, Any]:
    """Sign the package in ``directory`` with an Ed25519 private key and write
    ``signature.json`` there (replacing an earlier one). The package is checked first: its
    files must match the manifest, and it must hold no file the manifest does not list.
    Returns what was written."""
    directory = Path(directory)
    signer = private_key(key, password)
    manifest = read_manifest(directory)
    extra = unlisted_files(directory, manifest)
    if extra:
        raise PackageError(
            f"{directory.name}: {_names(extra)} not listed in the manifest, so a signature "
            "would not cover it; remove it from the package folder before signing"
        )
    raw = (directory / MANIFEST).read_bytes()
    record = {
        "format": FORMAT,
        "version": 1,
        "algorithm": ALGORITHM,
        "key_id": key_id(signer.public_key()),
        "signed_file": MANIFEST,
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "signature": base64.b64encode(signer.sign(DOMAIN + raw)).decode(),
    }
    tmp = directory / f".{SIGNATURE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, directory / SIGNATURE)  # a reader sees the old signature or the new one
    return record


def verify_package(directory: str | Path, key: Key) -> tuple[dict[str, Any], str]:
    """Check the signature and every file of a package without opening its models:
    the manifest and the key id; PackageError naming the first problem."""
    directory = Path(directory)
    return read_manifest(directory, verify=key), key_id(public_key(key))
