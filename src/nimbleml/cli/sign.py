"""Verbs that sign packages and check them: keygen, sign, verify (see signing.py and the
trust model in docs/package-format.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import _guard, _show


def keygen(
    private: Path = typer.Argument(..., help="file for the private key, e.g. signing-key.pem"),
    public: Path | None = typer.Option(
        None, "--public", help="file for the public key [beside it, NAME.pub.pem]"
    ),
) -> None:
    """Make an Ed25519 key pair for signing packages (encrypted when NIMBLEML_KEY_PASSPHRASE
    is set)."""
    import os

    from ..signing import PASSPHRASE_ENV, generate_key

    def go() -> None:
        password = os.environ.get(PASSPHRASE_ENV, "").encode() or None
        priv, pub, kid = generate_key(private, public, password=password)
        _show(f"wrote {priv} (private: keep it secret, only you can read it)")
        _show(f"wrote {pub} (public: give it to whoever loads your packages)")
        _show(f"key id {kid}")

    _guard(go)


def sign(
    package: Path = typer.Argument(..., help="the .nimble package folder"),
    key: Path = typer.Option(..., "--key", help="private key (PEM) from nimbleml keygen"),
) -> None:
    """Sign a package: writes signature.json into it (NIMBLEML_KEY_PASSPHRASE for an
    encrypted key)."""
    from ..signing import SIGNATURE, sign_package

    def go() -> None:
        record = sign_package(package, key)
        _show(f"signed {package.name} with key {record['key_id']} ({package / SIGNATURE})")

    _guard(go)


def verify(
    package: Path = typer.Argument(..., help="the .nimble package folder"),
    key: Path = typer.Option(..., "--key", help="the signer's public key (PEM)"),
) -> None:
    """Check that a package is signed by KEY and unchanged since: one line, exit 0 or 2."""
    from ..signing import verify_package

    def go() -> None:
        manifest, kid = verify_package(package, key)
        files = len(manifest["files"])
        _show(
            f"ok: {package.name} is signed by key {kid} and its manifest and "
            f"{files} file{'s' if files > 1 else ''} are unchanged"
        )

    _guard(go)
