"""OptimizedPredictor: one model (or package) behind batching, a tiered cache and stats."""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._counters import advance, peek
from ..bench.stats import summarize
from ..errors import ConfigError
from ..inputs import batch_size as rows_in
from ..models.base import Model
from .cache import TieredCache, make_cache
from .codec import KeyMaker

WINDOW = 100_000  # latencies kept for percentiles (a ring buffer)


def content_hash(model: Model) -> str:
    """A hash of what the model computes with: its file or serialised weights."""
    from ..models.onnx_model import OnnxModel

    h = hashlib.sha256()
    if isinstance(model, OnnxModel):
        h.update(model.data)
    elif model.framework == "openvino":  # sha256 of model.xml + model.bin
        h.update(model.digest().encode())  # type: ignore[attr-defined]
    elif model.framework == "torch":
        module = model.module  # type: ignore[attr-defined]
        h.update(type(module).__qualname__.encode())
        for name, value in sorted(module.state_dict().items()):
            h.update(name.encode())
            _hash_tensors(h, value)
    else:  # joblib.hash walks the fitted estimator deterministically (it hashes, never loads)
        import joblib

        h.update(joblib.hash(model.estimator, hash_name="sha1").encode())  # type: ignore[attr-defined]
    return h.hexdigest()


def _hash_tensors(h: Any, value: Any) -> None:
    """Feed tensors (and tuples of them, as quantised modules keep) into ``h``."""
    if isinstance(value, tuple | list):
        for v in value:
            _hash_tensors(h, v)
    elif hasattr(value, "detach"):
        t = value.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        try:
            h.update(t.numpy().tobytes())
        except (TypeError, RuntimeError):  # bf16 / quantised tensors have no numpy dtype
            h.update(
                t.float().numpy().tobytes()
                if not t.is_quantized
                else t.int_repr().numpy().tobytes()
            )


def _resolve(model_or_package: Any, example_inputs: Any) -> tuple[Model, str, str]:
    """(model, content hash, name) from a Package, a path, a Model or a framework model."""
    from ..models.loader import load_model
    from ..package import Package, load

    obj = model_or_package
    if isinstance(obj, str | Path) and (Path(obj) / "manifest.json").is_file():
        obj = load(obj)
    if isinstance(obj, Package):
        entry = (obj.model is obj.baseline and obj.manifest["baseline"]) or obj.manifest["model"]
        digest = next(f["sha256"] for f in obj.manifest["files"] if f["path"] == entry["path"])
        return obj.model, digest, obj.name
    model = load_model(obj, example_inputs)
    return model, content_hash(model), type(getattr(model, "module", model)).__name__


class OptimizedPredictor:
    """Batched, cached, measured predictions from one model.

    ``model``: a Package, a package path, a Model, or a framework model (with
    ``example_inputs`` where it needs them).

    ``predict(x)`` runs one request (any batch) through the cache; ``predict_batch(X)``
    splits X into ``batch_size`` chunks and runs them without caching. ``cache`` takes a
    TieredCache (memory, disk, Redis tiers); otherwise a memory tier of ``cache_size_mb``.
    ``monitor``: a ModelMonitor; every call is recorded (latency, output of a one-row
    request, prediction id) and the cache's counters appear on its /metrics.
    """

    def __init__(
        self,
        model: Any = None,
        batch_size: int = 32,
        use_cache: bool = True,
        cache_size_mb: float = 500,
        cache: TieredCache | None = None,
        monitor: Any = None,
        example_inputs: Any = None,
        *,
        model_or_package: Any = None,
    ) -> None:
        if model_or_package is not None:  # the parameter's earlier name, still accepted
            if model is not None:
                raise ConfigError("pass the model once: model=, not also model_or_package=")
            model = model_or_package
        if model is None:
            raise ConfigError(
                "OptimizedPredictor needs a model: a .nimble package (or its path), an "
                "nn.Module, a scikit-learn estimator or an ONNX file"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.model, self.model_hash, self.name = _resolve(model, example_inputs)
        self.cache = (cache or make_cache(cache_size_mb)) if use_cache else None
        self._key = KeyMaker(self.model_hash)
        self.monitor = monitor
        if monitor is not None and self.cache is not None:
            from ..monitor.export import cache_collector

            monitor.add_collector(f"cache_{self.name}", cache_collector(self.name, self.cache))
        self._last_ns: int | None = None
        self._latencies: list[int] = []  # a ring of the last WINDOW latencies (ns)
        self._calls = itertools.count()  # exact without a lock (atomic under the GIL)
        self._rows = itertools.count()
        self._started: float | None = None

    @property
    def last_latency_ms(self) -> float | None:
        """Latency of the latest call, in milliseconds."""
        return None if self._last_ns is None else self._last_ns / 1e6

    # -- predictions --------------------------------------------------------------------
    def run(self, x: Any, prediction_id: Any = None) -> list[np.ndarray]:
        """Every output for ``x`` (cached when the cache is on)."""
        t0 = time.perf_counter_ns()
        model = self.model
        feeds = model.feeds(x)
        cache = self.cache
        out = (
            model.run(feeds)
            if cache is None
            else cache.get_or_compute(self._key(feeds), model.run, feeds)
        )
        elapsed = time.perf_counter_ns() - t0
        i = next(self._calls)  # the common case of _record, inline (it is the hot path)
        if 0 < i < WINDOW and self.monitor is None and len(out[0]) == 1:
            self._latencies.append(elapsed)
            next(self._rows)
            self._last_ns = elapsed
            return out
        self._record(elapsed, len(out[0]) if out else 0, out, prediction_id, i)
        return out

    def predict(self, x: Any, prediction_id: Any = None) -> np.ndarray:
        """The first output: labels for scikit-learn classifiers, values or scores otherwise.
        ``prediction_id`` ties the monitor's record to ground truth that arrives later."""
        return self.run(x, prediction_id)[0]

    def predict_batch(self, X: Any) -> np.ndarray:
        """Predictions for many rows, ``batch_size`` rows per model call (not cached)."""
        model = self.model
        feeds = model.feeds(X)
        n = rows_in(feeds)
        parts = []
        for start in range(0, n, self.batch_size):
            t0 = time.perf_counter_ns()
            chunk = {k: v[start : start + self.batch_size] for k, v in feeds.items()}
            out = model.run(chunk)
            self._record(time.perf_counter_ns() - t0, rows_in(chunk), out)
            parts.append(out[0])
        if not parts:
            return np.empty((0,))
        return np.concatenate(parts)

    def _record(
        self,
        elapsed_ns: int,
        rows: int,
        out: list[np.ndarray],
        prediction_id: Any = None,
        i: int | None = None,
    ) -> None:
        if i is None:
            i = next(self._calls)
        if i < WINDOW:
            self._latencies.append(elapsed_ns)
            if i == 0:
                self._started = time.perf_counter() - elapsed_ns / 1e9
        else:
            try:
                self._latencies[i % WINDOW] = elapsed_ns
            except IndexError:  # another thread's append is still on its way
                self._latencies.append(elapsed_ns)
        if rows == 1:
            next(self._rows)
        else:
            advance(self._rows, rows)
        self._last_ns = elapsed_ns
        if self.monitor is not None:
            output = out[0][0] if rows == 1 else None
            self.monitor.record(elapsed_ns / 1e6, prediction_id, self.name, output)

    # -- figures ----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Latency percentiles (with n), throughput, and per-tier cache figures."""
        samples = np.asarray(self._latencies[:WINDOW], dtype=np.int64)
        n = samples.size
        calls, rows, started = peek(self._calls), peek(self._rows), self._started
        elapsed = time.perf_counter() - started if started else 0.0
        return {
            "calls": calls,
            "samples": rows,
            "latency_ms": summarize(samples, stable=False).to_dict() if n else None,
            "throughput_samples_per_s": rows / elapsed if elapsed > 0 else None,
            "cache": self.cache.info() if self.cache is not None else None,
        }
