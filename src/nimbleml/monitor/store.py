"""Where monitoring records live: SQLite in WAL mode, written in batches by one thread."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    ts REAL NOT NULL, model TEXT NOT NULL, prediction_id TEXT,
    latency_ms REAL NOT NULL, error INTEGER NOT NULL, output);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions(ts);
CREATE INDEX IF NOT EXISTS predictions_pid ON predictions(prediction_id);
CREATE TABLE IF NOT EXISTS labels (prediction_id TEXT PRIMARY KEY, label, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS labels_ts ON labels(ts);
CREATE TABLE IF NOT EXISTS windows (
    model TEXT NOT NULL, start REAL NOT NULL, seconds REAL NOT NULL, requests INTEGER NOT NULL,
    errors INTEGER NOT NULL, sampled INTEGER NOT NULL, sketch BLOB, PRIMARY KEY (model, start));
CREATE TABLE IF NOT EXISTS resources (
    ts REAL NOT NULL, cpu_percent REAL, rss_mb REAL, gpu_memory_mb REAL, gpu_utilization REAL);
CREATE TABLE IF NOT EXISTS alerts (
    ts REAL NOT NULL, model TEXT, rule TEXT, state TEXT, value REAL, threshold REAL, severity TEXT);
"""


def sqlite_path(url: str) -> str:
    """'sqlite:///relative.db', 'sqlite:////abs/path.db' or 'sqlite:///:memory:' -> path."""
    if not url.startswith("sqlite:///"):
        if url.startswith(("postgres://", "postgresql://")):
            raise ConfigError(
                "PostgreSQL stores are not supported in this version; use store='sqlite:///monitor.db'"
            )
        raise ConfigError(f"store must be a URL like 'sqlite:///monitor.db', got {url!r}")
    return url[len("sqlite:///") :]


class SqliteStore:
    """One connection, guarded by a lock; every write is one transaction."""

    def __init__(self, url: str) -> None:
        path = sqlite_path(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self._lock = threading.Lock()
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(
            "PRAGMA synchronous=NORMAL"
        )  # WAL + NORMAL: a killed process loses nothing committed
        self.conn.executescript(SCHEMA)

    def write(
        self,
        predictions: Sequence[tuple[Any, ...]],
        labels: Sequence[tuple[Any, ...]],
        windows: Iterable[tuple[Any, ...]],
        resources: Sequence[tuple[Any, ...]] = (),
        alerts: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        with self._lock:
            c = self.conn
            c.execute("BEGIN")
            try:
                c.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?)", predictions)
                c.executemany("INSERT OR REPLACE INTO labels VALUES (?, ?, ?)", labels)
                for model, start, seconds, requests, errors, sampled, sketch_fn in windows:
                    row = c.execute(
                        "SELECT sketch FROM windows WHERE model=? AND start=?", (model, start)
                    ).fetchone()
                    blob = sketch_fn(row[0] if row else None)
                    c.execute(
                        "INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(model, start) DO UPDATE SET "
                        "requests=requests+excluded.requests, errors=errors+excluded.errors, "
                        "sampled=sampled+excluded.sampled, sketch=excluded.sketch",
                        (model, start, seconds, requests, errors, sampled, blob),
                    )
                c.executemany("INSERT INTO resources VALUES (?, ?, ?, ?, ?)", resources)
                c.executemany("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)", alerts)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def delete_before(self, cutoff: float) -> int:
        """Delete raw predictions and labels older than ``cutoff``; windows stay."""
        with self._lock:
            self.conn.execute("BEGIN")
            deleted = self.conn.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,)).rowcount
            self.conn.execute("DELETE FROM labels WHERE ts < ?", (cutoff,))
            self.conn.execute("DELETE FROM resources WHERE ts < ?", (cutoff,))
            self.conn.execute("COMMIT")
            return int(deleted)

    def close(self) -> None:
        with self._lock:
            self.conn.close()
