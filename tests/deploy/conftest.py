"""Packages to deploy, the five targets written once, and a way to run a command out of a
generated file on this machine (container paths and ports mapped to local ones)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._net import free_port
from tests.monitor.conftest import postgres_url  # noqa: F401 - the fixture

TARGETS = ("docker", "compose", "kserve", "k8s", "skypilot")
NIMBLEML = str(Path(sys.executable).with_name("nimbleml"))


@pytest.fixture(scope="session")
def iris_package(tmp_path_factory) -> Path:
    """A logistic regression on iris, compressed: a real package in a few seconds."""
    import warnings

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import nimbleml

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(max_iter=300).fit(X, y)
    path = tmp_path_factory.mktemp("pkg") / "iris.nimble"
    nimbleml.compress(model, quantize=None, val=(X, y), benchmark_time_s=0.01).save(path)
    return path


@pytest.fixture(scope="session")
def deployments(tmp_path_factory, iris_package) -> dict[str, Path]:
    """Every target written for two models (the same package under two names)."""
    import nimbleml

    root = tmp_path_factory.mktemp("deploy")
    out = {}
    for target in TARGETS:
        nimbleml.deploy([f"iris={iris_package}", f"flowers={iris_package}"], target,
                        root / target)  # fmt: skip
        out[target] = root / target
    return out


def local_argv(argv: list[str], models: Path, port: int, **urls: str) -> list[str]:
    """A server command from a generated file, as it runs here: the console script of this
    venv, the packages the deployment copied, 127.0.0.1 on ``port``, and local services
    for ``--redis`` / ``--monitor-store``."""
    assert argv[:2] == ["nimbleml", "serve"], argv
    out = [NIMBLEML, "serve"]
    args = iter(argv[2:])
    for arg in args:
        if not arg.startswith("--"):
            name, path = arg.split("=", 1)
            assert Path(path).name == f"{name}.nimble", arg
            out.append(f"{name}={models / Path(path).name}")
            continue
        value = next(args)
        key = arg[2:].replace("-", "_")
        value = {"port": str(port), "host": "127.0.0.1"}.get(key) or urls.get(key) or value
        out += [arg, value]
    return out


@pytest.fixture(scope="session")
def redis_url():
    from tests.runtime.conftest import RedisServer

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server")
    server = RedisServer(free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
