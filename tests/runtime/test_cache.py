import logging
import os
import threading
import time

import numpy as np
import pytest

from nimbleml.errors import ConfigError, DataError
from nimbleml.runtime import DiskTier, MemoryTier, RedisTier, TieredCache, make_cache
from nimbleml.runtime.codec import KeyMaker, cache_key, decode, encode


def outs(v: float = 1.0):
    return [np.array([3], np.int64), np.full((1, 4), v, np.float32)]


def test_codec_roundtrip_numbers_and_strings():
    data = [
        np.arange(6, dtype=np.float64).reshape(2, 3),
        np.array(["a", "bc"]),
        np.zeros((0, 2), np.int8),
    ]
    back = decode(encode(data))
    assert np.array_equal(back[0], data[0]) and back[0].dtype == np.float64
    assert back[1].tolist() == ["a", "bc"]
    assert back[2].shape == (0, 2)
    with pytest.raises(ValueError, match="not a nimbleml cache entry"):
        decode(b"garbage!")


@pytest.mark.parametrize("rows", [2, 200], ids=["exact-key", "hashed-key"])
def test_keys_depend_on_values_dtype_shape_and_model_only(rows):
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    key = cache_key("model-a", {"X": x})
    assert key == cache_key("model-a", {"X": x.copy()})
    assert key == cache_key("model-a", {"X": x.astype(">f4")})  # byte order is canonicalised
    assert key == cache_key("model-a", {"X": np.asfortranarray(x)})
    assert key != cache_key("model-b", {"X": x})
    assert key != cache_key("model-a", {"X": x.astype(np.float64)})
    assert key != cache_key("model-a", {"X": x.reshape(-1, 2)})
    assert key != cache_key("model-a", {"Y": x})
    changed = x.copy()
    changed[-1, -1] += 1
    assert key != cache_key("model-a", {"X": changed})
    maker = KeyMaker("model-a")
    assert maker({"X": x}) == key
    assert maker({"X": x[:1]}) != key and maker({"X": x}) == key  # the spec switches back
    assert maker({"X": x.astype(">f4")}) == key
    with pytest.raises(DataError, match="holds a dict"):
        maker({"X": np.array([[{"a": 1}]], dtype=object)})


def test_string_inputs_are_keyed_by_content():
    texts = np.array(["free money now", "meeting at 10", "", "café 東京"], dtype=object)
    maker = KeyMaker("model-a")
    key = maker({"text": texts})
    assert key == maker({"text": np.array(list(texts), dtype=object)})  # other objects
    assert key == cache_key("model-a", {"text": texts.copy()})
    assert key != maker({"text": texts[::-1].copy()})
    # element boundaries count: ["ab", "c"] is not ["a", "bc"]
    assert maker({"t": np.array(["ab", "c"], dtype=object)}) != maker(
        {"t": np.array(["a", "bc"], dtype=object)}
    )
    assert maker({"t": np.array([None], dtype=object)}) != maker(
        {"t": np.array([""], dtype=object)}
    )
    assert key != KeyMaker("model-b")({"text": texts})
    # several named columns (a DataFrame model): strings and numbers together
    cols = {"city": np.array([["Paris"]], dtype=object), "age": np.array([[31.0]], np.float32)}
    assert maker(cols) == maker({k: v.copy() for k, v in cols.items()})
    assert maker(cols) != maker({**cols, "city": np.array([["Lyon"]], dtype=object)})


def test_memory_tier_is_an_lru_bounded_in_bytes():
    tier = MemoryTier(max_bytes=3 * (64 + 16 + 8 + 16))  # room for three entries
    for i in range(4):
        tier.put(bytes([i]) * 16, outs(i))
    assert tier.get(bytes([0]) * 16) is None  # the oldest went first
    assert tier.get(bytes([3]) * 16)[1][0, 0] == 3
    assert tier.stats.evictions == 1 and tier.bytes <= tier.max_bytes
    got = tier.get(bytes([3]) * 16)
    with pytest.raises(ValueError):
        got[1][0, 0] = 99  # cached results are read-only
    assert tier.info()["hit_rate"] == pytest.approx(2 / 3)
    with pytest.raises(ConfigError):
        MemoryTier(0)


def test_disk_tier_persists_expires_and_stays_bounded(tmp_path, caplog):
    tier = DiskTier(tmp_path, max_bytes=10_000, ttl_s=60)
    tier.put(b"k" * 16, outs(2.0))
    again = DiskTier(tmp_path, max_bytes=10_000, ttl_s=60)  # a new process would see it
    assert again.get(b"k" * 16)[1][0, 0] == 2.0
    path = next(tmp_path.glob("*.nmc"))
    old = time.time() - 120
    os.utime(path, (old, old))
    assert again.get(b"k" * 16) is None and not path.exists()  # expired and removed
    small = DiskTier(tmp_path / "small", max_bytes=600, ttl_s=60)
    for i in range(10):
        small.put(bytes([i]) * 16, outs(i))
    assert small.bytes <= 600 and small.stats.evictions > 0
    assert small.get(bytes([9]) * 16) is not None and small.get(bytes([0]) * 16) is None
    bad = next((tmp_path / "small").glob("*.nmc"))
    bad.write_bytes(b"corrupt")
    key = bytes.fromhex(bad.stem)
    with caplog.at_level(logging.WARNING, logger="nimbleml.cache"):
        assert small.get(key) is None
    assert "unreadable" in caplog.text and not bad.exists()
    long_key = KeyMaker("m")({"X": np.arange(64, dtype=np.float32)[None]})  # exact: 272 bytes
    assert len(long_key) > 255
    tier.put(long_key, outs(5.0))
    assert tier.get(long_key)[1][0, 0] == 5.0  # the file name is a digest of the key


def test_lower_tier_hits_are_promoted(tmp_path):
    cache = make_cache(size_mb=1, disk_dir=tmp_path)
    memory, disk = cache.tiers
    disk.put(b"z" * 16, outs(5.0))
    assert cache.get(b"z" * 16)[1][0, 0] == 5.0
    assert memory.get(b"z" * 16) is not None
    assert disk.stats.hits == 1


def test_single_flight_makes_one_model_call():
    cache = make_cache(size_mb=1)
    calls = []
    start = threading.Barrier(8)

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return outs(7.0)

    results = []

    def worker():
        start.wait()
        results.append(cache.get_or_compute(b"same" * 4, slow))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.computed == 1 and cache.coalesced == 7
    assert all(r[1][0, 0] == 7.0 for r in results) and len(results) == 8


def test_single_flight_shares_errors_and_does_not_cache_them():
    cache = make_cache(size_mb=1)
    gate = threading.Event()

    def boom():
        gate.wait(1)
        raise RuntimeError("model failed")

    errors = []

    def worker():
        try:
            cache.get_or_compute(b"e" * 16, boom)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join()
    assert errors == ["model failed"] * 4
    assert cache.get_or_compute(b"e" * 16, lambda: outs(1.0))[1][0, 0] == 1.0


def test_redis_tier_is_shared_between_caches(redis_server):
    a = TieredCache([MemoryTier(2**20), RedisTier(redis_server.url)])
    b = TieredCache([MemoryTier(2**20), RedisTier(redis_server.url)])
    a.get_or_compute(b"r" * 16, lambda: outs(4.0))
    got = b.get_or_compute(b"r" * 16, lambda: pytest.fail("should come from Redis"))
    assert got[1][0, 0] == 4.0
    assert b.tiers[1].stats.hits == 1 and b.computed == 0
    a.close()
    b.close()


def test_redis_outage_degrades_and_recovers(redis_server, caplog):
    tier = RedisTier(redis_server.url, timeout_s=0.05, retry_s=0.3)
    cache = TieredCache([MemoryTier(2**20), tier])
    cache.get_or_compute(b"1" * 16, lambda: outs(1.0))
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="nimbleml.cache"):
        t0 = time.perf_counter()
        for i in range(50):
            assert cache.get_or_compute(bytes([i]) * 16 + b"x", lambda: outs(2.0))[1][0, 0] == 2.0
        per_call_ms = (time.perf_counter() - t0) / 50 * 1e3
    assert tier.available is False and tier.outages == 1 and tier.stats.errors > 0
    assert "unreachable" in caplog.text
    assert per_call_ms < 20  # one timeout, then skipped until the retry time
    redis_server.start()
    time.sleep(0.35)
    cache.get_or_compute(b"after" * 3 + b"!", lambda: outs(3.0))
    assert tier.available is True
    assert tier.client.get(b"nimbleml:" + b"after" * 3 + b"!") is not None
    cache.close()


def test_bad_cache_settings():
    with pytest.raises(ConfigError, match="redis://"):
        RedisTier("http://localhost:6379")
    with pytest.raises(ConfigError, match="cache_size_mb"):
        make_cache(size_mb=0)
