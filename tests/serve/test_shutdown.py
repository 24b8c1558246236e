"""Stopping a server: SIGTERM or Ctrl-C (SIGINT) of `nimbleml serve`, one process or several
workers, leaves the monitor's SQLite store whole, without its -wal and -shm files (issue 22,
serving)."""

from __future__ import annotations

import signal
import sqlite3

import httpx
import psutil
import pytest

from tests._net import v2_body

from .conftest import ServeProcess, serve_workers, wait_for_workers


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_clean_stop_leaves_only_the_database(tmp_path, digits_package, digits, sig, workers):
    db = tmp_path / "x.db"
    args = [f"digits={digits_package}", "--monitor-store", f"sqlite:///{db}",
            "--workers", str(workers)]  # fmt: skip
    with ServeProcess(args, tmp_path / "serve.log") as s:
        procs = wait_for_workers(s, workers) if workers > 1 else []
        sent = 30
        for i in range(sent):  # each on a new connection: with two workers, both record some
            r = httpx.post(f"{s.url}/v2/models/digits/infer", json=v2_body(digits[1][i : i + 1]))
            assert r.status_code == 200, r.text
        assert serve_workers(s) == procs
        s.proc.send_signal(sig)
        code = s.proc.wait(timeout=60)
        _, alive = psutil.wait_procs(procs, timeout=15)
        assert not alive, f"workers left running: {alive}"
    assert code in (0, 130, -signal.SIGTERM), s.log()
    assert sorted(p.name for p in tmp_path.glob("x.db*")) == ["x.db"], s.log()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM predictions WHERE model = 'digits'").fetchone()
    assert rows[0] == sent
