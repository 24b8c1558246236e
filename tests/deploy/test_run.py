"""The server command of every artifact, started for real here (same command, same flags;
container paths and ports mapped to local ones), answers /v2/health/ready; the healthchecks
the artifacts declare pass against it; every metric the dashboard and the autoscaler rule
query is one the running server exports."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import httpx
import numpy as np
import pytest
import yaml

from tests._net import free_port
from tests.deploy.conftest import local_argv
from tests.serve.conftest import ServeProcess


def dockerfile_argv(folder) -> tuple[list[str], list[str], dict[str, str]]:
    """(ENTRYPOINT + CMD, the HEALTHCHECK command, each instruction's value) of a Dockerfile,
    parsed by dockerfile-parse, as Docker would read them."""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(folder / "Dockerfile"))
    values = {i["instruction"]: i["value"] for i in parser.structure}
    values["RUN"] = "\n".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    health = values["HEALTHCHECK"].split(" CMD ", 1)[1]
    return (json.loads(values["ENTRYPOINT"]) + json.loads(values["CMD"]), json.loads(health),
            values)  # fmt: skip


def commands(deployments) -> dict[str, list[str]]:
    """The server command each artifact runs."""
    argv, _, _ = dockerfile_argv(deployments["docker"])
    (isvc,) = yaml.safe_load_all((deployments["kserve"] / "inferenceservice.yaml").read_text())
    (c,) = isvc["spec"]["predictor"]["containers"]
    docs = list(yaml.safe_load_all((deployments["k8s"] / "kubernetes.yaml").read_text()))
    (k,) = docs[0]["spec"]["template"]["spec"]["containers"]
    task = yaml.safe_load((deployments["skypilot"] / "task.yaml").read_text())
    (run,) = [line for line in task["run"].splitlines() if line.strip()]
    compose = yaml.safe_load((deployments["compose"] / "compose.yaml").read_text())
    # the compose server runs the image of its own Dockerfile: that ENTRYPOINT + its command
    _, _, compose_image = dockerfile_argv(deployments["compose"])
    entrypoint = json.loads(compose_image["ENTRYPOINT"])
    return {
        "docker": argv,
        "kserve": c["command"] + c["args"],
        "k8s": k["command"] + k["args"],
        "skypilot": shlex.split(run),
        "compose": entrypoint + compose["services"]["server"]["command"],
    }


def run_healthcheck(command: list[str], port: int) -> int:
    assert command[0] == "python", command
    argv = [
        sys.executable,
        *[a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in command[1:]],
    ]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_the_dockerfile_is_what_the_issue_asks(deployments):
    from nimbleml import __version__

    _, health, values = dockerfile_argv(deployments["docker"])
    assert re.fullmatch(r"python:3\.\d+-slim", values["FROM"])
    assert values["USER"].split(":")[0] not in ("0", "root")
    assert "/v2/health/ready" in " ".join(health)
    assert json.loads(values["ENTRYPOINT"]) == ["nimbleml", "serve"]
    install = shlex.split(next(v for v in values["RUN"].splitlines() if "pip install" in v))
    assert f"nimbleml[serve]=={__version__}" in install
    assert any(a.startswith("onnxruntime==") for a in install)
    assert not any(a.startswith("torch") for a in install)  # not a torch package
    assert values["COPY"].split()[0] == "models/"
    assert (deployments["docker"] / "models" / "iris.nimble" / "manifest.json").is_file()


def test_one_server_command_for_docker_kserve_k8s_and_skypilot(deployments, tmp_path):
    found = commands(deployments)
    models = {t: deployments[t] / "models" for t in found}
    mapped = {t: local_argv(argv, models["docker"], 1234) for t, argv in found.items()
              if t != "compose"}  # fmt: skip
    assert all(argv == mapped["docker"] for argv in mapped.values()), mapped
    for flag in ("--threads", "--max-batch-size"):
        assert flag in found["docker"]


@pytest.fixture(scope="module")
def served(deployments, tmp_path_factory):
    """The docker (= kserve = k8s = skypilot) command, running."""
    argv, _, _ = dockerfile_argv(deployments["docker"])
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = local_argv(argv, deployments["docker"] / "models", port)
    with ServeProcess([], log, command=command, port=port) as server:
        yield server


def test_the_command_answers_ready_and_the_healthcheck_passes(served, deployments):
    assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{served.url}/v2/health/live").status_code == 200
    _, health, _ = dockerfile_argv(deployments["docker"])
    assert run_healthcheck(health, served.port) == 0
    assert run_healthcheck(health, free_port()) != 0  # and fails where nothing answers


def test_every_metric_the_dashboard_and_adapter_query_is_exported(served):
    from nimbleml.deploy.observability import queries

    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    meta = httpx.get(f"{served.url}/v2/models/iris").json()
    body["inputs"][0]["name"] = meta["inputs"][0]["name"]
    answer = httpx.post(f"{served.url}/v2/models/iris/infer", json=body)
    assert answer.status_code == 200, answer.text
    text = httpx.get(f"{served.url}/metrics").text
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                if line and not line.startswith("#")}  # fmt: skip
    used = {m for q in queries() for m in re.findall(r"\bnimbleml_[a-z_]+", q)}
    assert len(used) >= 9
    assert used <= exported, f"queried but not exported: {sorted(used - exported)}"


def test_the_compose_command_runs_with_redis_postgres_and_workers(
    deployments,
    tmp_path,
    redis_url,
    postgres_url,
):
    argv = commands(deployments)["compose"]
    assert argv[argv.index("--workers") + 1] == "2"
    assert argv[argv.index("--redis") + 1].startswith("redis://redis:")
    assert argv[argv.index("--monitor-store") + 1].startswith("postgresql://")
    port = free_port()
    local = local_argv(argv, deployments["compose"] / "models", port,
                       redis=redis_url, monitor_store=postgres_url)  # fmt: skip
    compose = yaml.safe_load((deployments["compose"] / "compose.yaml").read_text())
    health = compose["services"]["server"]["healthcheck"]["test"]
    assert health[0] == "CMD"
    with ServeProcess([], tmp_path / "compose-serve.log", command=local, port=port) as server:
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        assert run_healthcheck(health[1:], port) == 0
