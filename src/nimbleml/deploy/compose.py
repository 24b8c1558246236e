"""``--target compose``: the server (built from the Dockerfile) with ``--workers`` processes
sharing a Redis cache tier, PostgreSQL as the monitor store (the workers' records together),
Prometheus scraping /metrics and Grafana with its datasource and dashboard provisioned.
Every service has a healthcheck, and each waits for what it needs to be healthy."""

from __future__ import annotations

from typing import Any

from . import docker, observability
from .files import json_text, yaml_text
from .plan import KEYS, PORT, Plan

REDIS_IMAGE = "redis:7.2-alpine"
POSTGRES_IMAGE = "postgres:16-alpine"
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.0"
GRAFANA_IMAGE = "grafana/grafana:11.1.0"
REDIS_URL = "redis://redis:6379/0"
POSTGRES_URL = "postgresql://nimble:${POSTGRES_PASSWORD:-nimble}@postgres:5432/nimble"
DASHBOARDS = "/var/lib/grafana/dashboards"


def _health(test: list[str], start: str = "10s") -> dict[str, Any]:
    return {"test": test, "interval": "10s", "timeout": "3s", "retries": 5, "start_period": start}


def _healthy(*names: str) -> dict[str, Any]:
    return {name: {"condition": "service_healthy"} for name in names}


def compose(plan: Plan) -> dict[str, Any]:
    # memory only: a CPU limit above the host's cores is refused by Docker, and the workers'
    # threads are already sized (--threads); the cpu setting says what a host needs
    memory = plan["memory_mib"] * plan.workers
    server = {
        "build": {"context": "."},
        "image": plan.image,
        "command": plan.serve_args(
            workers=plan.workers, redis=REDIS_URL, monitor_store=POSTGRES_URL
        ),
        "ports": [f"{PORT}:{PORT}"],
        "healthcheck": _health(["CMD", *docker.health_command()], start="60s"),
        "depends_on": _healthy("redis", "postgres"),
        "deploy": {"resources": {"limits": {"memory": f"{memory}M"}}},
        "restart": "unless-stopped",
    }
    return {
        "name": plan.name,
        "services": {
            "server": server,
            "redis": {
                "image": REDIS_IMAGE,
                # a cache: no persistence; bounded, least recently used keys go first
                "command": ["redis-server", "--save", "", "--appendonly", "no",
                            "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"],
                "healthcheck": _health(["CMD", "redis-cli", "ping"]),
                "restart": "unless-stopped",
            },
            "postgres": {
                "image": POSTGRES_IMAGE,
                "environment": {"POSTGRES_USER": "nimble", "POSTGRES_DB": "nimble",
                                "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:-nimble}"},
                "volumes": ["pgdata:/var/lib/postgresql/data"],
                "healthcheck": _health(["CMD-SHELL", "pg_isready -U nimble -d nimble"]),
                "restart": "unless-stopped",
            },
            "prometheus": {
                "image": PROMETHEUS_IMAGE,
                "volumes": ["./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"],
                "ports": ["9090:9090"],
                "healthcheck": _health(["CMD", "wget", "-q", "--spider",
                                        "http://localhost:9090/-/ready"]),
                "depends_on": _healthy("server"),
                "restart": "unless-stopped",
            },
            "grafana": {
                "image": GRAFANA_IMAGE,
                "environment": {"GF_SECURITY_ADMIN_PASSWORD": "${GRAFANA_PASSWORD:-admin}"},
                "volumes": ["./grafana/provisioning:/etc/grafana/provisioning:ro",
                            f"./grafana/dashboards:{DASHBOARDS}:ro"],
                "ports": ["3000:3000"],
                "healthcheck": _health(["CMD", "wget", "-q", "--spider",
                                        "http://localhost:3000/api/health"]),
                "depends_on": _healthy("prometheus"),
                "restart": "unless-stopped",
            },
        },
        "volumes": {"pgdata": {}},
    }  # fmt: skip


def files(plan: Plan) -> dict[str, str]:
    head = plan.comment("Docker Compose file", KEYS["compose"])
    head += [
        "Start: docker compose up -d; Grafana on :3000 (admin / $GRAFANA_PASSWORD, "
        "default admin), Prometheus on :9090, the server on :8000.",
        "Set POSTGRES_PASSWORD in the environment or an .env file beside this file.",
    ]
    return {
        "Dockerfile": docker.dockerfile(plan, ("serve", "monitor")),
        ".dockerignore": "*\n!models/\n",
        "compose.yaml": yaml_text([compose(plan)], head),
        "prometheus/prometheus.yml": yaml_text(
            [observability.prometheus_config(f"server:{PORT}")],
            ["Prometheus scraping nimbleml serve's /metrics (written by nimbleml deploy)"],
        ),
        "grafana/provisioning/datasources/prometheus.yaml": yaml_text(
            [observability.grafana_datasource("http://prometheus:9090")],
            ["Grafana datasource (written by nimbleml deploy)"],
        ),
        "grafana/provisioning/dashboards/nimbleml.yaml": yaml_text(
            [observability.grafana_provider(DASHBOARDS)],
            ["Grafana dashboard provider (written by nimbleml deploy)"],
        ),
        "grafana/dashboards/nimbleml.json": json_text(observability.dashboard(plan)),
    }
