"""What watches the server: the Prometheus scrape config, the Grafana datasource, dashboard
provider and dashboard, and the prometheus-adapter rule the Kubernetes autoscaler reads.

Every query names series ``nimbleml serve`` exports on /metrics (serve/metrics.py,
monitor/export.py); tests/deploy scrape a running server and check each name is there.
"""

from __future__ import annotations

from typing import Any

from .plan import KEYS, PORT, Plan

QUEUE_GAUGE = "nimbleml_queue_seconds_per_request"  # mean queue wait per request, last 30 s
RATE = "[1m]"


def prometheus_config(target: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "5s", "evaluation_interval": "15s"},
        "scrape_configs": [{
            "job_name": "nimbleml",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [target]}],
        }],
    }  # fmt: skip


def grafana_datasource(url: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [{"name": "Prometheus", "type": "prometheus", "uid": "prometheus",
                         "access": "proxy", "url": url, "isDefault": True, "editable": False}],
    }  # fmt: skip


def grafana_provider(path: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [{"name": "nimbleml", "folder": "nimbleml", "type": "file",
                       "disableDeletion": False, "options": {"path": path}}],
    }  # fmt: skip


def _hit_rate() -> str:
    hits = f"sum by (model, tier) (rate(nimbleml_cache_hits_total{RATE}))"
    misses = f"sum by (model, tier) (rate(nimbleml_cache_misses_total{RATE}))"
    return f"{hits} / clamp_min({hits} + {misses}, 1e-9)"


# (title, unit, [(query, legend)]): the panels, in order
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Latency percentiles", "ms", [
        (f"histogram_quantile({q}, sum by (le, model) (rate(nimbleml_latency_ms_bucket{RATE})))",
         f"{{{{model}}}} p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]),
    ("Throughput", "reqps", [
        (f"sum by (model) (rate(nimbleml_predictions_total{RATE}))", "{{model}} predictions/s"),
        (f"sum by (code) (rate(nimbleml_http_responses_total{RATE}))", "HTTP {{code}}"),
    ]),
    ("Queue time per request", "s", [
        (f"max by (model) ({QUEUE_GAUGE})", "{{model}} mean wait, last 30 s"),
        (f"sum by (model) (rate(nimbleml_queue_wait_seconds_total{RATE})) / "
         f"clamp_min(sum by (model) (rate(nimbleml_batched_samples_total{RATE})), 1e-9)",
         "{{model}} wait per sample"),
    ]),
    ("Queue depth", "short", [("sum by (model) (nimbleml_queue_samples)", "{{model}} samples")]),
    ("Cache hit rate", "percentunit", [(_hit_rate(), "{{model}} {{tier}}")]),
    ("Shed requests (503, queue full)", "reqps", [
        (f"sum by (model) (rate(nimbleml_shed_requests_total{RATE}))", "{{model}} shed/s"),
    ]),
]  # fmt: skip


def dashboard(plan: Plan) -> dict[str, Any]:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "prometheus"}}
                        for j, (expr, legend) in enumerate(targets)],
        })  # fmt: skip
    return {
        "uid": "nimbleml-serve",
        "title": f"nimbleml serve: {', '.join(p.name for p in plan.packages)}",
        "description": " | ".join(plan.comment("Dashboard", KEYS["compose"])),
        "tags": ["nimbleml"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "panels": panels,
    }


def adapter_rule() -> dict[str, Any]:
    """prometheus-adapter's custom-metrics rule for the queue gauge, per pod. The gauge is
    already the mean over 30 s (Triton's chart computes the same from two counters); a pod
    serving several models scales on its most queued one."""
    return {
        "seriesQuery": f'{QUEUE_GAUGE}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"},
                                    "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{QUEUE_GAUGE}$", "as": QUEUE_GAUGE},
        "metricsQuery": "max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    }  # fmt: skip


def adapter_values() -> dict[str, Any]:
    """Helm values for prometheus-community/prometheus-adapter."""
    return {
        "prometheus": {"url": "http://prometheus-server.monitoring.svc", "port": 80},
        "rules": {"default": False, "custom": [adapter_rule()]},
    }


def queries() -> list[str]:
    """Every PromQL expression the generated files use (for the tests)."""
    return [expr for _, _, targets in PANELS for expr, _ in targets] + [
        adapter_rule()["seriesQuery"]
    ]


def scrape_annotations() -> dict[str, str]:
    """The pod annotations the usual Prometheus kubernetes-pods job scrapes by (it also
    adds the namespace and pod labels the adapter rule matches on)."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
            "prometheus.io/path": "/metrics"}  # fmt: skip
