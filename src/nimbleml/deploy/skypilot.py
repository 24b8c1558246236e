"""``--target skypilot``: a SkyPilot task, SkyPilot being the engine that runs a job on the
cheapest instance of any cloud that meets its resources (its optimizer picks it).

Serving (packages given): ``sky serve up task.yaml`` runs ``nimbleml serve`` on spot replicas
with on-demand fallback, ready on /v2/health/ready, and scales replicas on requests per
second when a capacity was measured. Training (``--train CONFIG``): ``sky jobs launch
task.yaml`` runs ``nimbleml train`` on a spot instance with its checkpoints in a bucket
mounted at /checkpoints, and ``--resume``: a preempted job is relaunched by SkyPilot and
goes on from its last checkpoint (a first run with no checkpoint starts fresh).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from .files import yaml_text
from .plan import KEYS, KNATIVE_UTILIZATION, PORT, Plan, requirements

CHECKPOINTS = "/checkpoints"


def _setup(reqs: list[str], options: list[str]) -> str:
    return shlex.join(["pip", "install", *options, *reqs]) + "\n"


def serve_task(plan: Plan, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    reqs, options = requirements(plan)
    command = ["nimbleml", "serve", *plan.serve_args(models_dir="models")]
    gb = max(1, math.ceil(plan["memory_mib"] / 1024))
    policy: dict[str, Any] = {"min_replicas": min_replicas}
    rps = plan["capacity_rps"]
    if rps:  # scale on measured capacity, with the same 70% headroom as Knative's
        policy.update(max_replicas=max_replicas,
                      target_qps_per_replica=round(rps * KNATIVE_UTILIZATION, 1))  # fmt: skip
    policy["dynamic_ondemand_fallback"] = True
    return {
        "name": plan.name,
        "resources": {
            "cpus": f"{plan['cpu']}+",
            "memory": f"{gb}+",
            "use_spot": True,
            "ports": PORT,
        },
        "workdir": ".",
        "setup": _setup(reqs, options),
        "run": shlex.join(command) + "\n",
        "service": {
            "readiness_probe": {"path": "/v2/health/ready", "initial_delay_seconds": 120},
            "replica_policy": policy,
        },
    }


def train_task(name: str, config: Path, bucket: str, accelerators: str | None) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from .._version import __version__

    try:
        torch = f"torch=={version('torch').split('+')[0]}"
    except PackageNotFoundError:  # pragma: no cover - dev installs torch
        torch = "torch"
    resources: dict[str, Any] = {"cpus": "4+", "memory": "16+", "use_spot": True,
                                 "job_recovery": {"max_restarts_on_errors": 3}}  # fmt: skip
    if accelerators:
        resources["accelerators"] = accelerators
    run = ["nimbleml", "train", "--config", config.name,
           "--checkpoint-dir", f"{CHECKPOINTS}/{name}", "--resume"]  # fmt: skip
    return {
        "name": name,
        "resources": resources,
        "workdir": ".",
        "file_mounts": {CHECKPOINTS: {"name": bucket, "mode": "MOUNT"}},
        "setup": _setup([torch, f"nimbleml[torch]=={__version__}"], []),
        "run": shlex.join(run) + "\n",
    }


def serve_files(plan: Plan, min_replicas: int, max_replicas: int) -> dict[str, str]:
    head = plan.comment("SkyPilot service task", KEYS["skypilot"])
    if not plan["capacity_rps"]:
        head.append(f"No measured capacity: {min_replicas} replica(s), not autoscaled; pass "
                    "--capacity-rps or --serve-report to scale on requests per second.")  # fmt: skip
    head += ["Start: sky serve up task.yaml (from this folder: workdir . holds models/)."]
    return {"task.yaml": yaml_text([serve_task(plan, min_replicas, max_replicas)], head)}


def train_files(config: Path, bucket: str, accelerators: str | None) -> dict[str, str]:
    from .._version import __version__

    name = "nimbleml-train-" + "".join(
        c if c.isalnum() else "-" for c in config.stem.lower()
    ).strip("-")
    head = [f"SkyPilot managed job, written by nimbleml deploy {__version__} for {config.name}.",
            f"Spot instance, checkpoints in the bucket {bucket} mounted at {CHECKPOINTS}; a "
            "preempted run is relaunched and resumes from its last checkpoint.",
            "Put the data the config names in this folder (workdir .) or in a bucket.",
            "Start: sky jobs launch task.yaml"]  # fmt: skip
    return {
        "task.yaml": yaml_text([train_task(name, config, bucket, accelerators)], head),
        config.name: config.read_text(),
    }
