"""The PostgreSQL store, against a real server: several monitors (a fleet) share it."""

import time

import pytest

from nimbleml.errors import ConfigError
from nimbleml.monitor import ModelMonitor
from nimbleml.monitor.report import write_report


def fleet_monitor(url):
    return ModelMonitor(store=url, background=False, resources_interval_s=None)


def test_two_processes_share_one_store(pg_store, tmp_path):
    a, b = fleet_monitor(pg_store), fleet_monitor(pg_store)
    for i in range(300):
        (a if i % 2 else b).record(float(1 + i % 4), prediction_id=f"p{i}", output=i % 3)
    now = time.time()
    a.flush(now)
    b.flush(now)
    for i in range(0, 300, 2):
        a.record_ground_truth(f"p{i}", i % 3 if i % 10 else 5)
    a.flush(now)
    windows = a.store.query("SELECT SUM(requests), SUM(sampled) FROM windows")[0]
    assert tuple(int(v) for v in windows) == (300, 300)  # both processes' windows merged
    acc = b.accuracy()  # b sees the labels a recorded: the join runs in the shared database
    assert acc["labeled"] == 150 and acc["accuracy"] == pytest.approx(0.8)
    assert b.labels_report()["coverage"] == pytest.approx(0.5)
    assert a.accuracy_by_window()[0]["labeled"] == 150
    assert a.apply_retention(now=time.time() + 30 * 86400) == 300
    assert int(a.store.query("SELECT SUM(requests) FROM windows")[0][0]) == 300
    files = write_report(pg_store, tmp_path / "report")
    assert any(p.name == "insights.txt" for p in files)
    a.close()
    b.close()


def test_unreachable_postgres_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot connect to the PostgreSQL store"):
        ModelMonitor(store="postgresql://nobody@127.0.0.1:1/none", background=False)
