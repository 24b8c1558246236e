"""Several worker processes on one port (`nimbleml serve --workers N`): a reload through the
repository route reaches every worker, and killing a worker or the server in the middle of one
leaves nothing behind (issue 22, serving)."""

from __future__ import annotations

import shutil

import httpx
import numpy as np

import nimbleml
from tests._net import v2_body

from .conftest import ServeProcess, wait_for_workers


def versions_seen(url: str, digits, n: int = 40) -> set[str]:
    """The versions `n` requests see, each on a new connection (so either worker answers),
    from the metadata and from the inference answers (its version, and its outputs: which
    package's predictions they are)."""
    x = digits[1][:1]
    outputs = {version_of(p): np.asarray(nimbleml.load(p).predict(x)[0]) for p in PACKAGES}
    seen = set()
    for i in range(n):
        if i % 2:
            seen.update(httpx.get(f"{url}/v2/models/digits", timeout=30).json()["versions"])
            continue
        r = httpx.post(f"{url}/v2/models/digits/infer", json=v2_body(x), timeout=30)
        assert r.status_code == 200, r.text
        version, got = r.json()["model_version"], r.json()["outputs"][0]["data"]
        assert np.allclose(got, outputs[version].ravel(), atol=1e-4), version
        seen.add(version)
    return seen


PACKAGES: list = []  # the packages a test serves, for versions_seen


def version_of(package) -> str:
    return nimbleml.load(package).manifest["created_at"]


def test_a_reload_reaches_every_worker(tmp_path, digits_package, digits_package_v2, digits):
    """The route reloaded the one worker that answered it; the other served the old version
    for good, and metadata alternated between the two."""
    repo = tmp_path / "repo"
    repo.mkdir()
    old = shutil.copytree(digits_package, repo / "old.nimble")
    new = shutil.copytree(digits_package_v2, repo / "new.nimble")
    PACKAGES[:] = [old, new]
    args = [f"digits={old}", "--workers", "2", "--repository", str(repo)]
    with ServeProcess(args, tmp_path / "w.log") as s:
        wait_for_workers(s, 2)
        assert versions_seen(s.url, digits, 10) == {version_of(old)}
        r = httpx.post(f"{s.url}/v2/repository/models/digits/load",
                       json={"parameters": {"path": str(new)}}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["version"] == version_of(new)
        assert versions_seen(s.url, digits) == {version_of(new)}, s.log()
        assert r.json()["workers"] == 2  # the answer says how many workers serve it
