"""Prometheus exposition: computed at scrape time from the monitor's aggregates, so nothing
(no label lookup, no histogram update) is added to the prediction hot path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._deps import require
from .sketch import GAMMA, OFFSET

if TYPE_CHECKING:
    from .core import ModelMonitor

BOUNDS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def _collector(monitor: ModelMonitor) -> Any:
    require("prometheus_client", "Prometheus metrics")
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class MonitorCollector:
        def collect(self) -> Any:
            requests = CounterMetricFamily(
                "nimbleml_predictions", "Predictions recorded (exact)", labels=["model"]
            )
            errors = CounterMetricFamily(
                "nimbleml_prediction_errors", "Failed predictions (exact)", labels=["model"]
            )
            hist = HistogramMetricFamily(
                "nimbleml_latency_ms", "Prediction latency (sampled records, ms)", labels=["model"]
            )
            quantiles = GaugeMetricFamily(
                "nimbleml_latency_quantile_ms",
                "Latency percentiles from the sketch (ms)",
                labels=["model", "quantile"],
            )
            for model in monitor.models():
                c = monitor.counts(model)
                requests.add_metric([model], c["requests"])
                errors.add_metric([model], c["errors"])
                sketch = monitor._totals.get(model)
                if sketch is None or sketch.n == 0:
                    continue
                upper = 2 * GAMMA ** (np.arange(sketch.counts.size) + OFFSET) / (GAMMA + 1)
                cumulative = np.cumsum(sketch.counts)
                positions = np.searchsorted(upper, np.asarray(BOUNDS_MS), side="right") - 1
                buckets = [
                    (str(b), float(cumulative[p]) if p >= 0 else 0.0)
                    for b, p in zip(BOUNDS_MS, positions.tolist(), strict=True)
                ]
                buckets.append(("+Inf", float(sketch.n)))
                hist.add_metric([model], buckets, sum_value=monitor._latency_sum.get(model, 0.0))
                for q in (0.5, 0.95, 0.99):
                    quantiles.add_metric([model, str(q)], sketch.quantile(q) or 0.0)
            yield requests
            yield errors
            yield hist
            yield quantiles
            for collector in list(monitor._collectors.values()):
                yield from collector.collect()

    return MonitorCollector()


def cache_families(caches: Any) -> list[Any]:
    """Hits and misses of TieredCaches by tier, as counters labelled model and tier, from
    (model, cache) pairs."""
    require("prometheus_client", "Prometheus metrics")
    from prometheus_client.core import CounterMetricFamily

    hits = CounterMetricFamily(
        "nimbleml_cache_hits", "Cache hits by tier", labels=["model", "tier"]
    )
    misses = CounterMetricFamily(
        "nimbleml_cache_misses", "Cache misses by tier", labels=["model", "tier"]
    )
    for model, cache in caches:
        for tier, info in cache.info()["tiers"].items():
            hits.add_metric([model, tier], info["hits"])
            misses.add_metric([model, tier], info["misses"])
    return [hits, misses]


def cache_collector(model: str, cache: Any) -> Any:
    """A collector of one predictor's cache (see cache_families)."""

    class CacheCollector:
        def collect(self) -> Any:
            yield from cache_families([(model, cache)])

    return CacheCollector()


def registry(monitor: ModelMonitor, *extra: Any) -> Any:
    """A prometheus_client registry holding the monitor's metrics (and ``extra``
    collectors: the server's own)."""
    require("prometheus_client", "Prometheus metrics")
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    reg.register(_collector(monitor))
    for collector in extra:
        reg.register(collector)
    return reg


def metrics_text(monitor: ModelMonitor, *extra: Any) -> str:
    """The Prometheus text exposition format, as served on /metrics."""
    from prometheus_client import generate_latest

    return generate_latest(registry(monitor, *extra)).decode()
