"""``--target docker``: a Dockerfile for the server with the packages copied in.

Built from (instruction, arguments) pairs; every exec-form argument list is written as
JSON, which is what Docker parses, so quoting cannot go wrong. The image: the slim Python
base of this interpreter's version, nimbleml pinned with its runtime extras only, a
non-root user, the packages read-only, a HEALTHCHECK on /v2/health/ready (ready only after
every model ran one real inference), ``nimbleml serve`` as the entrypoint.
"""

from __future__ import annotations

import json
import shlex
import sys

from .plan import KEYS, MODELS_DIR, PORT, Plan, requirements

UID = 10001  # a fixed non-root uid: Kubernetes' runAsNonRoot checks a number
BASE = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


def health_command(port: int = PORT, path: str = "/v2/health/ready") -> list[str]:
    """A probe the slim image can run (it has no curl): exit 0 only on a 2xx answer."""
    code = (f"import urllib.request; urllib.request.urlopen("
            f"'http://127.0.0.1:{port}{path}', timeout=2)")  # fmt: skip
    return ["python", "-c", code]


def dockerfile(plan: Plan, extras: tuple[str, ...] = ("serve",)) -> str:
    reqs, pip_options = requirements(plan, extras)
    install = ["pip", "install", "--no-cache-dir", *pip_options, *reqs]
    args = plan.serve_args()
    instructions: list[tuple[str, str]] = [
        ("FROM", BASE),
        ("ENV", "PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1"),
        ("RUN", shlex.join(install)),
        ("RUN", f"useradd --create-home --uid {UID} --user-group nimble"),
        # root-owned and read-only to the server: a package must not change while it loads
        ("COPY", f"models/ {MODELS_DIR}/"),
        ("USER", f"{UID}:{UID}"),
        ("WORKDIR", "/home/nimble"),
        ("EXPOSE", str(PORT)),
        (
            "HEALTHCHECK",
            "--interval=10s --timeout=3s --start-period=60s --retries=3 CMD "
            + json.dumps(health_command()),
        ),
        ("ENTRYPOINT", json.dumps(["nimbleml", "serve"])),
        ("CMD", json.dumps(args)),
    ]
    head = [f"# {line}".rstrip() for line in plan.comment("Dockerfile", KEYS["docker"])]
    head += [f"# Build: docker build -t {plan.image} .   Run: docker run -p {PORT}:{PORT} "
             f"{plan.image}"]  # fmt: skip
    return "\n".join([*head, *(f"{op} {arg}" for op, arg in instructions)]) + "\n"


def files(plan: Plan) -> dict[str, str]:
    return {"Dockerfile": dockerfile(plan), ".dockerignore": "*\n!models/\n"}
