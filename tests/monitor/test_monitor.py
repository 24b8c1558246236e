"""ModelMonitor against a real SQLite file: sketch accuracy, exact counts, ground truth,
alerts with hysteresis, retention, crash safety, Prometheus, the report."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from nimbleml.cli import app
from nimbleml.errors import ConfigError
from nimbleml.monitor import AlertRule, LogSketch, ModelMonitor, metrics_text, parse_duration


def monitor(tmp_path, **kw):
    kw.setdefault("background", False)
    kw.setdefault("resources_interval_s", None)
    return ModelMonitor(store=f"sqlite:///{tmp_path / 'm.db'}", **kw)


def test_sketch_is_within_one_percent_and_mergeable():
    rng = np.random.default_rng(0)
    values = rng.lognormal(0.0, 1.5, 100_000)
    sk = LogSketch()
    sk.add(values)
    ordered = np.sort(values)
    for q in (0.5, 0.9, 0.95, 0.99, 0.999):
        exact = ordered[int(q * (len(values) - 1))]
        assert abs(sk.quantile(q) - exact) / exact <= 0.01
    a, b = LogSketch(), LogSketch()
    a.add(values[:40_000])
    b.add(values[40_000:])
    merged = a.merge(b)
    assert np.array_equal(merged.counts, sk.counts) and merged.n == sk.n
    back = LogSketch.from_bytes(sk.to_bytes())
    assert np.array_equal(back.counts, sk.counts) and back.quantile(0.99) == sk.quantile(0.99)
    assert LogSketch().quantile(0.5) is None


def test_counts_are_exact_whatever_the_sampling(tmp_path):
    m = monitor(tmp_path, sampling_rate=0.2)
    for i in range(10_000):
        m.record(1.0, error=i % 100 == 0)
    m.record_batch(np.full(5_000, 2.0), errors=np.arange(5_000) % 50 == 0)
    m.flush()
    assert m.counts() == {"requests": 15_000, "errors": 200}
    lat = m.latency()
    assert 2_400 < lat["n"] < 3_600  # about 20% of 15,000 sampled
    assert lat["unreliable"] == []
    stored = m.store.query("SELECT COUNT(*) FROM predictions")[0][0]
    assert stored == lat["n"]
    assert m.store.query("SELECT SUM(requests), SUM(errors) FROM windows")[0] == (15_000, 200)
    m.close()


def test_few_samples_are_marked(tmp_path):
    m = monitor(tmp_path)
    for _ in range(100):
        m.record(1.0)
    m.flush()
    assert m.latency()["unreliable"] == ["p95", "p99"]
    m.close()


def test_ground_truth_joins_by_id(tmp_path):
    m = monitor(tmp_path)
    for i in range(300):
        m.record(1.0, prediction_id=f"req-{i}", output=np.int64(i % 3))
    m.flush()
    for i in range(0, 300, 3):  # a third of the labels arrive, 10% of them disagree
        m.record_ground_truth(f"req-{i}", (i % 3) if i % 30 else 1)
    m.record_ground_truth("never-predicted", 1)
    m.flush()
    acc = m.accuracy()
    assert acc["labeled"] == 100 and acc["accuracy"] == pytest.approx(0.9)
    report = m.labels_report()
    assert report["coverage"] == pytest.approx(100 / 300)
    assert report["orphan_labels"] == 1
    assert report["delay_s"]["p50"] >= 0
    assert m.accuracy_by_window()[0]["labeled"] == 100
    with pytest.raises(ConfigError, match="prediction_id"):
        m.record_ground_truth(None, 1)
    m.close()


def test_sampled_ids_are_consistent_for_labels(tmp_path):
    m = monitor(tmp_path, sampling_rate=0.3)
    for i in range(2000):
        m.record(1.0, prediction_id=i, output=1)
    m.flush()
    for i in range(2000):
        m.record_ground_truth(i, 1)
    m.flush()
    report = m.labels_report()
    assert report["orphan_labels"] == 0  # labels of unsampled predictions are not orphans
    assert report["coverage"] == 1.0
    assert report["labeled"] + report["unsampled_labels"] == 2000
    m.close()


def test_regression_error(tmp_path):
    m = monitor(tmp_path, task="regression")
    for i in range(50):
        m.record(1.0, prediction_id=i, output=float(i) + 0.5)
        m.record_ground_truth(i, float(i))
    m.flush()
    assert m.accuracy()["mae"] == pytest.approx(0.5)
    m.close()


def test_alerts_need_evidence_persistence_and_respect_cooldown(tmp_path):
    events = []
    rule = AlertRule("slow", "latency_p99", threshold=10.0, min_samples=50, for_windows=2,
                     clear_windows=2, cooldown_s=100, window_s=60, severity="critical")  # fmt: skip
    m = monitor(tmp_path, alerts=[rule], callbacks=[events.append])
    now = (time.time() // 60) * 60 + 1  # evaluations stay inside the records' window
    for _ in range(20):
        m.record(50.0)
    assert m.flush(now) == []  # 20 samples < min_samples: no verdict
    for _ in range(100):
        m.record(50.0)
    assert m.flush(now + 1) == []  # first breach: hysteresis waits for a second one
    assert m.flush(now + 2) == []  # the same records read again are not a second breach
    m.record(50.0)
    fired = m.flush(now + 3)
    assert [e.state for e in fired] == ["firing"] and events == fired
    assert m.health() == {
        "model": "default",
        "status": "failing",
        "reasons": [m.health()["reasons"][0]],
    }
    assert "slow" in m.health()["reasons"][0]
    m._windows.clear()  # the slow period ends: new windows are fast
    for _ in range(200):
        m.record(1.0)
    assert m.flush(now + 4) == []
    m.record(1.0)
    resolved = m.flush(now + 5)
    assert [e.state for e in resolved] == ["resolved"] and m.health()["status"] == "healthy"
    m._windows.clear()
    for _ in range(200):
        m.record(50.0)
    m.flush(now + 6)
    m.record(50.0)
    assert m.flush(now + 7) == []  # within the cooldown: no new alert
    stored = m.store.query("SELECT rule, state FROM alerts ORDER BY ts")
    assert stored == [("slow", "firing"), ("slow", "resolved")]
    m.close()


def test_error_rate_and_accuracy_alerts(tmp_path):
    rules = [AlertRule("errors", "error_rate", 0.1, min_samples=10, for_windows=1),
             AlertRule("wrong", "accuracy", 0.8, op="<", min_samples=10, for_windows=1)]  # fmt: skip
    m = monitor(tmp_path, alerts=rules)
    for i in range(100):
        m.record(1.0, prediction_id=i, output=1, error=i % 4 == 0)
        m.record_ground_truth(i, 1 if i % 2 else 0)
    events = m.flush()
    names = {e.rule for e in events}
    assert names == {"errors", "wrong"}
    assert m.health()["status"] == "degraded"
    m.close()


def test_throughput_drop_alert(tmp_path):
    rule = AlertRule("drop", "throughput_drop", 0.5, window_s=10, min_samples=10, for_windows=1)
    m = monitor(tmp_path, alerts=[rule], window_s=10)
    t0 = (time.time() // 10) * 10
    for _ in range(200):
        m.record(1.0)
    assert m.flush(t0 + 1) == []  # no earlier window to compare with
    for _ in range(20):
        m.record(1.0)
    events = m.flush(t0 + 11)
    assert [(e.rule, e.state) for e in events] == [("drop", "firing")]
    assert events[0].value == pytest.approx(0.9)
    m.close()


def test_retention_keeps_summaries(tmp_path):
    m = monitor(tmp_path, retention="1h")
    for i in range(1000):
        m.record(1.0, prediction_id=i, output=0)
    m.flush()
    assert m.apply_retention(now=time.time() + 2 * 3600) == 1000
    assert m.store.query("SELECT COUNT(*) FROM predictions")[0][0] == 0
    assert m.store.query("SELECT SUM(requests) FROM windows")[0][0] == 1000
    m.close()


def test_sigkill_loses_at_most_the_last_interval(tmp_path):
    db = tmp_path / "crash.db"
    script = textwrap.dedent(f"""
        import time
        from nimbleml.monitor import ModelMonitor
        m = ModelMonitor(store="sqlite:///{db}", flush_interval_s=0.05, resources_interval_s=None)
        i = 0
        while True:
            m.record(1.0, prediction_id=i, output=i % 2)
            i += 1
            if i % 1000 == 0:
                time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        rows = 0
        while time.monotonic() < deadline and rows < 20_000:
            time.sleep(0.2)
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=1) as c:
                        rows = c.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
                except sqlite3.OperationalError:
                    rows = 0
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert rows >= 20_000
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        after = c.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        assert after >= rows
        ids = [
            r[0]
            for r in c.execute("SELECT CAST(prediction_id AS INTEGER) FROM predictions ORDER BY 1")
        ]
    assert ids == list(range(len(ids)))  # a prefix: nothing lost in the middle


def test_prometheus_and_cache_gauges(tmp_path, pipeline, digits):
    from nimbleml.runtime import OptimizedPredictor

    m = monitor(tmp_path)
    p = OptimizedPredictor(pipeline, monitor=m)
    for i in range(5):
        p.predict(digits[1][:1], prediction_id=i)
    m.flush()
    text = metrics_text(m)
    name = p.name
    assert f'nimbleml_predictions_total{{model="{name}"}} 5.0' in text
    assert f'nimbleml_latency_ms_bucket{{le="+Inf",model="{name}"}} 5.0' in text
    assert f'nimbleml_cache_hits_total{{model="{name}",tier="memory"}} 4.0' in text
    assert m.store.query("SELECT COUNT(*) FROM predictions WHERE output IS NOT NULL")[0][0] == 5
    m.close()


def test_report_cli(tmp_path):
    m = monitor(
        tmp_path,
        resources_interval_s=0.0,
        alerts=[AlertRule("slow", "latency_p50", 0.5, min_samples=5, for_windows=1)],
    )
    for i in range(200):
        m.record(float(1 + i % 5), prediction_id=i, output=i % 2)
        m.record_ground_truth(i, 1)
    m.flush()
    m.close()
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", "--monitor", str(tmp_path / "m.db"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("latency_throughput.png", "accuracy.png", "resources.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    text = (out / "insights.txt").read_text()
    assert "200 predictions" in text and "alert slow firing" in text
    bad = CliRunner().invoke(
        app, ["report", "--monitor", str(tmp_path / "none.db"), "-o", str(out)]
    )
    assert bad.exit_code == 2 and "not found" in bad.output


def test_background_thread_flushes(tmp_path):
    m = ModelMonitor(
        store=f"sqlite:///{tmp_path / 'bg.db'}", flush_interval_s=0.05, resources_interval_s=0.05
    )
    for _ in range(100):
        m.record(1.0)
    time.sleep(0.4)
    assert m.latency()["n"] == 100
    assert m.store.query("SELECT COUNT(*) FROM resources")[0][0] >= 1
    m.close()


def test_bad_settings():
    with pytest.raises(ConfigError, match="sampling_rate"):
        ModelMonitor(sampling_rate=0, store="sqlite:///:memory:", background=False)
    with pytest.raises(ConfigError, match="sqlite:///monitor.db"):
        ModelMonitor(store="mysql://x", background=False)
    with pytest.raises(ConfigError, match="14d"):
        parse_duration("two weeks")
    assert parse_duration("14d") == 14 * 86400 and parse_duration(30) == 30
    with pytest.raises(ConfigError, match="unknown metric"):
        AlertRule("x", "latency_p42", 1.0)
    with pytest.raises(ConfigError, match="unique"):
        ModelMonitor(store="sqlite:///:memory:", background=False,
                     alerts=[AlertRule("a", "error_rate", 0.1), AlertRule("a", "throughput", 1)])  # fmt: skip
    m = ModelMonitor(store="sqlite:///:memory:", background=False)
    with pytest.raises(ConfigError, match="3 items for 2 latencies"):
        m.record_batch([1.0, 2.0], prediction_ids=[1, 2, 3])


def test_report_opens_stores_read_only_and_creates_nothing_on_failure(tmp_path):
    """`nimbleml report --monitor other.db` wrote nimbleml's tables into any SQLite file and
    made the output folder before failing; a non-SQLite file was a traceback (issue 11,
    item 9)."""
    import sqlite3

    from typer.testing import CliRunner

    from nimbleml.cli import app

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.close()
    before = other.read_bytes()
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", "--monitor", str(other), "-o", str(out)])
    assert res.exit_code == 2 and "is not a nimbleml monitor store" in res.output
    assert other.read_bytes() == before and not out.exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    res = CliRunner().invoke(app, ["report", "--monitor", str(garbage), "-o", str(out)])
    assert res.exit_code == 2 and "is not an SQLite database" in res.output
    assert res.output.count("\n") == 1 and not out.exists()


def test_flush_waits_for_a_background_flush_so_health_follows_at_once(tmp_path):
    """flush() while the background thread was still writing the same records evaluated the
    alerts without them: health() said 'healthy', then changed 0.5 s later (issue 11)."""
    rule = AlertRule("wrong", "accuracy", 0.8, op="<", min_samples=10, for_windows=1)
    m = ModelMonitor(store=f"sqlite:///{tmp_path / 'bg.db'}", flush_interval_s=0.01,
                     resources_interval_s=None, alerts=[rule])  # fmt: skip
    writing, write = threading.Event(), m.store.write

    def slow_write(predictions, *args, **kwargs):  # the background flush carrying the records
        if predictions and not writing.is_set():
            writing.set()
            time.sleep(0.3)
        return write(predictions, *args, **kwargs)

    m.store.write = slow_write  # type: ignore[method-assign]
    for i in range(50):
        m.record(1.0, prediction_id=i, output=0)
        m.record_ground_truth(i, 1)
    assert writing.wait(5)
    m.flush()
    assert m.health()["status"] == "degraded" and "wrong" in m.health()["reasons"][0]
    m.close()


def test_the_same_records_read_again_are_not_new_evidence(tmp_path):
    """for_windows=2 fired without a new record: the background thread's next flush read the
    same records again and counted them as a second breach (issue 11)."""
    m = monitor(tmp_path, alerts=[AlertRule("errors", "error_rate", 0.1, min_samples=10)])
    for _ in range(50):
        m.record(1.0, error=True)
    assert m.flush() == [] and m.health()["status"] == "healthy"  # one breach of two
    assert m.flush() == [] and m.flush() == []  # nothing new recorded: nothing changes
    assert m.health()["status"] == "healthy"
    for _ in range(50):
        m.record(1.0, error=True)
    assert [e.state for e in m.flush()] == ["firing"]
    assert m.health()["status"] == "degraded"
    m.close()


def test_threads_recording_while_flushing_lose_nothing(tmp_path):
    """record has no lock (hotpath.py): four threads record, a fifth records batches, while
    the background thread and a sixth one flush; with a 1 µs switch interval, threads change
    in the middle of everything. Every record is stored once, in its window, and the counts
    are exact (test_hotpath.py stresses the list protocol itself, thousands of takes)."""
    m = ModelMonitor(store=f"sqlite:///{tmp_path / 'threads.db'}", flush_interval_s=0.001,
                     resources_interval_s=None)  # fmt: skip
    per, go = 5_000, threading.Barrier(5)

    def one_by_one(t):
        go.wait()
        for i in range(per):
            m.record(1.0, f"{t}-{i}", f"m{t % 2}", i % 2, i % 10 == 0)

    def batches():
        go.wait()
        for b in range(50):
            m.record_batch(np.full(100, 2.0), [f"b-{b}-{i}" for i in range(100)], "m0",
                           errors=np.arange(100) % 10 == 0)  # fmt: skip

    def flushing():  # beside the background thread: flushes back to back
        while any(thread.is_alive() for thread in threads):
            m.flush()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=one_by_one, args=(t,)) for t in range(4)]
        threads.append(threading.Thread(target=batches))
        for thread in threads:
            thread.start()
        flusher = threading.Thread(target=flushing)
        flusher.start()
        for thread in [*threads, flusher]:
            thread.join(60)
    finally:
        sys.setswitchinterval(switch)
    m.flush()
    ids = [r[0] for r in m.store.query("SELECT prediction_id FROM predictions")]
    assert len(ids) == len(set(ids)) == 4 * per + 5_000
    assert m.counts("m0") == {"requests": 2 * per + 5_000, "errors": (2 * per + 5_000) // 10}
    assert m.counts("m1") == {"requests": 2 * per, "errors": 2 * per // 10}
    assert m.latency("m0")["n"] == 2 * per + 5_000 and m.latency("m1")["n"] == 2 * per
    windows = m.store.query("SELECT model, SUM(requests), SUM(sampled) FROM windows GROUP BY model")
    assert sorted(windows) == [("m0", 15_000, 15_000), ("m1", 10_000, 10_000)]
    m.close()


def test_sampling_rate_rebuilds_the_hot_path(tmp_path):
    """record is a closure built for the rate; setting the rate builds another, and the id
    hash the hot path samples by is the one ground truth checks."""
    m = monitor(tmp_path)
    assert m.record.__doc__ == ModelMonitor.record.__doc__
    m.sampling_rate = 0.5
    for i in range(1000):
        m.record(1.0, prediction_id=i)
    ModelMonitor.record(m, 1.0, prediction_id=1000)  # the method calls the same closure
    m.flush()
    kept = {int(r[0]) for r in m.store.query("SELECT prediction_id FROM predictions")}
    assert 400 < len(kept) < 600 and m.counts()["requests"] == 1001
    for i in range(1001):
        m.record_ground_truth(i, 1)
    assert m.labels_unsampled == 1001 - len(kept)
    with pytest.raises(ConfigError, match="sampling_rate"):
        m.sampling_rate = 1.5
    m.close()
