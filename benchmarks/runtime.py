"""Figures for the predictor and its cache (issue 4), side by side in one run.

    .venv/bin/python benchmarks/runtime.py [--quick]

- predictor overhead over calling the ONNX Runtime session directly, one row:
  cache miss (every call a new input, the cache full and evicting) and memory-cache hit
  (goals: <= 10 µs and <= 5 µs);
- cache hit latency per tier (memory, disk, Redis on a local redis-server);
- single-flight: N concurrent identical misses -> model calls;
- ensembles of 2-4 ONNX members at batch 64: parallel vs sequential, and the mode chosen.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # for tests._net
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "runtime"))

import nimbleml
from _harness import quick_args, side_by_side, table
from conftest import RedisServer, free_port
from nimbleml.demo import digits, train_pipeline
from nimbleml.runtime import DiskTier, MemoryTier, OptimizedPredictor, RedisTier, TieredCache


def fresh_inputs(X: np.ndarray, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(X[i % len(X)][None] + rng.random((1, X.shape[1]), dtype=np.float32)) for i in range(n)]


def miss_overhead(pkg, X, n: int) -> dict[str, float]:
    """Interleaved blocks: bare session vs predictor misses, each call a new input, in steady
    state: the cache (0.25 MB) is full after the warm-up blocks, so every miss evicts an
    entry, as in a long-running server."""
    session = pkg.model.session
    name = session.get_inputs()[0].name
    pred = OptimizedPredictor(pkg, cache_size_mb=0.25)
    inputs = fresh_inputs(X, n * 10)
    bare_t, miss_t = [], []
    for block in range(-2, 10):  # two blocks of warm-up, not counted
        chunk = inputs[(block % 10) * n : (block % 10 + 1) * n]
        t0 = time.perf_counter_ns()
        for x in chunk:
            session.run(None, {name: x})
        bare = (time.perf_counter_ns() - t0) / n
        other = [x + 1 + block for x in chunk]  # new values: misses
        t0 = time.perf_counter_ns()
        for x in other:
            pred.predict(x)
        if block >= 0:
            bare_t.append(bare)
            miss_t.append((time.perf_counter_ns() - t0) / n)
    assert pred.cache is not None and pred.cache.computed >= n * 10
    return {"bare_us": float(np.median(bare_t)) / 1e3, "miss_us": float(np.median(miss_t)) / 1e3}


def main() -> None:
    args = quick_args(__doc__)
    Xtr, Xte, ytr, yte = digits()
    pkg = nimbleml.compress(
        train_pipeline(Xtr, ytr), quantize=None, val=(Xte, yte), benchmark_time_s=0.01
    )
    rounds = 5 if args.quick else 11
    rows = []

    m = miss_overhead(pkg, Xte, 500 if args.quick else 2000)
    rows.append(["miss: bare session, new input (µs)", f"{m['bare_us']:.2f}", ""])
    rows.append(["miss: predictor, new input (µs)", f"{m['miss_us']:.2f}",
                 f"+{m['miss_us'] - m['bare_us']:.2f} µs (goal <= 10)"])  # fmt: skip

    x = Xte[:1]
    session = pkg.model.session
    hit = OptimizedPredictor(pkg)
    hit.predict(x)
    t = side_by_side(
        {"bare": partial(session.run, None, {"X": x}), "hit": partial(hit.predict, x)},
        rounds=rounds,
    )
    rows.append(["hit: memory tier, predictor.predict (µs)", f"{t['hit']['p50_ms'] * 1e3:.2f}",
                 f"{t['hit']['p50_ms'] * 1e3:.2f} µs in all (goal <= 5); bare run {t['bare']['p50_ms'] * 1e3:.2f}"])  # fmt: skip

    server = RedisServer(free_port())
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            key, value = b"k" * 16, [np.array([1]), np.zeros((1, 10), np.float32)]
            tiers = {
                "memory": MemoryTier(2**20),
                "disk": DiskTier(tmp, 2**20),
                "redis": RedisTier(server.url),
            }
            for tier in tiers.values():
                tier.put(key, value)
            t = side_by_side(
                {n: partial(tier.get, key) for n, tier in tiers.items()}, rounds=rounds, calls=100
            )
            tiers["redis"].close()
            for n in tiers:
                rows.append(
                    [
                        f"hit latency, {n} tier get (µs)",
                        f"{t[n]['p50_ms'] * 1e3:.1f}",
                        f"p99 {t[n]['p99_ms'] * 1e3:.1f} µs",
                    ]
                )

            cache = TieredCache([MemoryTier(2**20), RedisTier(server.url)])
            calls = []

            def model_call():
                calls.append(1)
                time.sleep(0.05)
                return value

            n_threads = 32
            barrier = threading.Barrier(n_threads)

            def worker():
                barrier.wait()
                cache.get_or_compute(b"same-input-key!!", model_call)

            threads = [threading.Thread(target=worker) for _ in range(n_threads)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            rows.append([f"single-flight: {n_threads} concurrent identical misses", f"{len(calls)} model call(s)",
                         f"{cache.coalesced} waited for it"])  # fmt: skip
            cache.close()
    finally:
        server.stop()
    rows += ensemble_rows(Xtr, ytr, Xte, yte, rounds)
    print(table(rows, ["figure", "value", "note"]))


def ensemble_rows(Xtr, ytr, Xte, yte, rounds: int) -> list[list[str]]:
    from nimbleml.demo import train_mlp
    from nimbleml.runtime import EnsemblePredictor

    members = [
        nimbleml.compress(train_mlp(Xtr, ytr, hidden=512, epochs=2, seed=s), quantize=None,
                          val=(Xte, yte), benchmark_time_s=0.01)
        for s in range(4)
    ]  # fmt: skip
    x = Xte[:64]
    rows = []
    for n in (2, 3, 4):
        par = EnsemblePredictor(members[:n], parallel=True)
        par.mode = "parallel"  # force, to measure the parallel path itself
        seq = EnsemblePredictor(members[:n], parallel=False)
        auto = EnsemblePredictor(members[:n], parallel=True)
        auto.predict(x)
        t = side_by_side({"parallel": partial(par.predict, x), "sequential": partial(seq.predict, x)},
                         rounds=rounds, calls=50)  # fmt: skip
        ratio = t["sequential"]["p50_ms"] / t["parallel"]["p50_ms"]
        rows.append([f"ensemble of {n}, batch 64: parallel / sequential (ms)",
                     f"{t['parallel']['p50_ms']:.3f} / {t['sequential']['p50_ms']:.3f}",
                     f"parallel {ratio:.2f}x; parallel=True chose '{auto.mode}'"])  # fmt: skip
        for e in (par, seq, auto):
            e.close()
    return rows


if __name__ == "__main__":
    main()
