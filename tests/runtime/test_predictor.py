import numpy as np
import pytest

import nimbleml
from nimbleml.errors import ConfigError
from nimbleml.runtime import OptimizedPredictor, make_cache


@pytest.fixture(scope="module")
def package(pipeline, digits):
    _, Xte, _, yte = digits
    return nimbleml.compress(pipeline, quantize=None, val=(Xte, yte), benchmark_time_s=0.01)


def test_predictions_match_and_repeat_from_the_cache(package, pipeline, digits):
    Xte = digits[1]
    p = OptimizedPredictor(package)
    first = p.predict(Xte[:1])
    assert first[0] == pipeline.predict(Xte[:1])[0]
    assert p.last_latency_ms is not None and p.last_latency_ms > 0
    again = p.predict(Xte[:1])
    assert np.array_equal(first, again)
    info = p.stats()["cache"]
    assert info["tiers"]["memory"]["hits"] == 1 and info["model_calls"] == 1
    assert p.stats()["calls"] == 2


def test_predict_batch_splits_and_matches(package, pipeline, digits):
    Xte = digits[1]
    p = OptimizedPredictor(package, batch_size=50, use_cache=False)
    out = p.predict_batch(Xte)
    assert np.array_equal(out, pipeline.predict(Xte))
    stats = p.stats()
    assert stats["calls"] == int(np.ceil(len(Xte) / 50)) and stats["samples"] == len(Xte)
    assert stats["latency_ms"]["n"] == stats["calls"] and "p99" in stats["latency_ms"]["unreliable"]
    assert stats["throughput_samples_per_s"] > 0 and stats["cache"] is None


def test_raw_models_and_disk_tier(pipeline, digits, tmp_path):
    Xte = digits[1]
    cache = make_cache(size_mb=1, disk_dir=tmp_path)
    p = OptimizedPredictor(pipeline, cache=cache)
    assert p.predict(Xte[:3]).tolist() == pipeline.predict(Xte[:3]).tolist()
    q = OptimizedPredictor(pipeline, cache=make_cache(size_mb=1, disk_dir=tmp_path))
    q.predict(Xte[:3])
    assert q.cache.tiers[1].stats.hits == 1  # same model content, same input: shared key


def test_keys_differ_between_models(package, mlp, digits):
    a = OptimizedPredictor(package)
    b = OptimizedPredictor(mlp, example_inputs=digits[1][:2])
    assert a.model_hash != b.model_hash


def test_bad_arguments(package):
    with pytest.raises(ConfigError, match="batch_size"):
        OptimizedPredictor(package, batch_size=0)
    with pytest.raises(ConfigError, match="cache_size_mb"):
        OptimizedPredictor(package, cache_size_mb=-1)
