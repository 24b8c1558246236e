"""A small or read-only tmpfs for the tests that fill or lock a disk (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder``, unmounted after; skipped (with the reason) when not
    root or when this machine refuses the mount. Root passes permission bits, so a
    read-only folder is a read-only mount, not chmod 0o555."""
    if os.geteuid() != 0:
        pytest.skip("a small or read-only tmpfs needs root (mount -t tmpfs)")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
