"""The server's own Prometheus metrics, read at scrape time: responses by status code,
queue depth, shed requests, batches by dispatch reason, batch sizes as a histogram, queue
and compute time, the mean queue time per request over the last 30 s (a gauge for
autoscalers), cache hits and misses by tier. Counters are counters and carry their
dimensions as labels (``nimbleml_http_responses_total{code="200"}``), as Prometheus's
naming conventions ask; nothing is added to the request path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Server


def batch_size_buckets(sizes: dict[int, int], largest: int) -> list[tuple[str, float]]:
    """Cumulative (le, count) buckets at powers of two up to ``largest``, then +Inf."""
    bounds, b = [], 1
    while b < largest:
        bounds.append(b)
        b *= 2
    bounds.append(largest)
    out = [(str(bound), float(sum(n for s, n in sizes.items() if s <= bound))) for bound in bounds]
    out.append(("+Inf", float(sum(sizes.values()))))
    return out


def server_collector(server: Server) -> Any:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    from ..monitor.export import cache_families

    class ServerCollector:
        def collect(self) -> Any:
            responses = CounterMetricFamily(
                "nimbleml_http_responses", "HTTP responses by status code", labels=["code"]
            )
            for code, n in sorted(server.codes.items()):
                responses.add_metric([str(code)], n)
            yield responses
            queue = GaugeMetricFamily(
                "nimbleml_queue_samples", "Samples waiting for a batch", labels=["model"]
            )
            shed = CounterMetricFamily(
                "nimbleml_shed_requests", "Requests refused with 503 (queue full)", labels=["model"]
            )
            batches = CounterMetricFamily(
                "nimbleml_batches", "Batches run, by why they were dispatched",
                labels=["model", "reason"],
            )  # fmt: skip
            sizes = HistogramMetricFamily(
                "nimbleml_batch_size", "Samples per batch run", labels=["model"]
            )
            samples = CounterMetricFamily(
                "nimbleml_batched_samples", "Samples run in batches", labels=["model"]
            )
            waited = CounterMetricFamily(
                "nimbleml_queue_wait_seconds", "Time samples spent queued", labels=["model"]
            )
            computed = CounterMetricFamily(
                "nimbleml_compute_seconds", "Time spent running batches", labels=["model"]
            )
            per_request = GaugeMetricFamily(
                "nimbleml_queue_seconds_per_request",
                "Mean time a request waited for its batch over the last 30 s (0 when idle): "
                "the signal to autoscale on",
                labels=["model"],
            )
            largest = server.config.max_batch_size
            for name, entry in sorted(server.entries.items()):
                s = entry.batcher.stats
                queue.add_metric([name], entry.batcher.queued_samples)
                shed.add_metric([name], s.shed)
                for reason, n in s.batches.items():
                    batches.add_metric([name, reason], n)
                total = sum(size * n for size, n in s.batch_sizes.items())
                sizes.add_metric(
                    [name], batch_size_buckets(dict(s.batch_sizes), largest), sum_value=total
                )
                samples.add_metric([name], s.samples)
                waited.add_metric([name], s.queue_wait_s)
                computed.add_metric([name], s.compute_s)
                per_request.add_metric([name], s.recent_wait.mean())
            yield from (queue, shed, batches, sizes, samples, waited, computed, per_request)
            yield from cache_families(
                (name, e.cache) for name, e in sorted(server.entries.items()) if e.cache
            )

    return ServerCollector()
