"""Where monitoring records live: SQLite in WAL mode (one machine) or PostgreSQL (a fleet),
written in batches by the monitor's background thread, one transaction a batch."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .._deps import require
from ..errors import ConfigError

TABLES = """
CREATE TABLE IF NOT EXISTS predictions (
    ts {real} NOT NULL, model TEXT NOT NULL, prediction_id TEXT,
    latency_ms {real} NOT NULL, error INTEGER NOT NULL, output {any});
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions(ts);
CREATE INDEX IF NOT EXISTS predictions_pid ON predictions(prediction_id);
CREATE TABLE IF NOT EXISTS labels (prediction_id TEXT PRIMARY KEY, label {any}, ts {real} NOT NULL);
CREATE INDEX IF NOT EXISTS labels_ts ON labels(ts);
CREATE TABLE IF NOT EXISTS windows (
    model TEXT NOT NULL, start {real} NOT NULL, seconds {real} NOT NULL, requests BIGINT NOT NULL,
    errors BIGINT NOT NULL, sampled BIGINT NOT NULL, sketch {blob}, PRIMARY KEY (model, start));
CREATE TABLE IF NOT EXISTS resources (
    ts {real} NOT NULL, cpu_percent {real}, rss_mb {real}, gpu_memory_mb {real}, gpu_utilization {real});
CREATE TABLE IF NOT EXISTS alerts (
    ts {real} NOT NULL, model TEXT, rule TEXT, state TEXT, value {real}, threshold {real}, severity TEXT);
"""
UPSERT_WINDOW = (
    "INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, start) DO UPDATE SET "
    "requests = windows.requests + excluded.requests, errors = windows.errors + excluded.errors, "
    "sampled = windows.sampled + excluded.sampled, sketch = excluded.sketch"
)
WindowRow = tuple[str, float, float, int, int, int, Callable[[bytes | None], bytes]]


def open_store(url: str, read_only: bool = False) -> Store:
    """'sqlite:///path.db', 'sqlite:///:memory:' or 'postgresql://user@host:port/db'.
    ``read_only`` (SQLite): open an existing nimbleml store without writing to it; a file that
    is not SQLite, or a database without nimbleml's tables, is a ConfigError."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url, read_only=read_only)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ConfigError(
        f"store must be a URL like 'sqlite:///monitor.db' or 'postgresql://user@host/db', got {url!r}"
    )


class Store:
    """SQL shared by both databases; subclasses connect and translate placeholders."""

    dialect = "sql"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()

    # subclass hooks
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def _begin(self) -> None: ...
    def _commit(self) -> None: ...
    def _rollback(self) -> None: ...
    def close(self) -> None: ...

    def window_start(self, column: str) -> str:
        """SQL for the start of the window holding ``column`` (two parameters: seconds)."""
        return f"CAST({column} / ? AS INTEGER) * ?"

    def _rows(
        self, predictions: Sequence[tuple[Any, ...]], labels: Sequence[tuple[Any, ...]]
    ) -> tuple[Sequence[tuple[Any, ...]], Sequence[tuple[Any, ...]]]:
        """Rows as this database takes them (as they are, unless a subclass says)."""
        return predictions, labels

    def write(
        self,
        predictions: Sequence[tuple[Any, ...]],
        labels: Sequence[tuple[Any, ...]],
        windows: Iterable[WindowRow],
        resources: Sequence[tuple[Any, ...]] = (),
        alerts: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        predictions, labels = self._rows(predictions, labels)
        with self._lock:
            self._begin()
            try:
                if predictions:
                    self._executemany(
                        "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?)", predictions
                    )
                if labels:
                    self._executemany(
                        "INSERT INTO labels VALUES (?, ?, ?) ON CONFLICT (prediction_id) DO UPDATE SET "
                        "label = excluded.label, ts = excluded.ts",
                        labels,
                    )
                for model, start, seconds, requests, errors, sampled, merge in windows:
                    row = self._execute(
                        "SELECT sketch FROM windows WHERE model = ? AND start = ?", (model, start)
                    ).fetchone()
                    blob = merge(bytes(row[0]) if row and row[0] is not None else None)
                    self._execute(
                        UPSERT_WINDOW, (model, start, seconds, requests, errors, sampled, blob)
                    )
                if resources:
                    self._executemany("INSERT INTO resources VALUES (?, ?, ?, ?, ?)", resources)
                if alerts:
                    self._executemany("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)", alerts)
                self._commit()
            except BaseException:
                self._rollback()
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            self._begin()
            try:
                rows = [tuple(r) for r in self._execute(sql, params).fetchall()]
            finally:
                self._commit()
            return rows

    def delete_before(self, cutoff: float) -> int:
        """Delete raw predictions, labels and resource samples older than ``cutoff``;
        the per-window summaries stay."""
        with self._lock:
            self._begin()
            try:
                deleted = self._execute("DELETE FROM predictions WHERE ts < ?", (cutoff,)).rowcount
                self._execute("DELETE FROM labels WHERE ts < ?", (cutoff,))
                self._execute("DELETE FROM resources WHERE ts < ?", (cutoff,))
                self._commit()
            except BaseException:
                self._rollback()
                raise
            return int(deleted)


def sqlite_path(url: str) -> str:
    """'sqlite:///relative.db', 'sqlite:////abs/path.db' or 'sqlite:///:memory:' -> path."""
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"not a SQLite URL: {url!r}; use sqlite:///path.db")
    return url[len("sqlite:///") :]


class SqliteStore(Store):
    """One connection in WAL mode: a killed process loses nothing it committed."""

    dialect = "sqlite"

    def __init__(self, url: str, read_only: bool = False) -> None:
        super().__init__(url)
        path = sqlite_path(url)
        self.read_only = read_only
        if read_only:
            self.conn = _open_read_only(path)
            return
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(TABLES.format(real="REAL", any="", blob="BLOB"))

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def _begin(self) -> None:
        self.conn.execute("BEGIN")

    def _commit(self) -> None:
        self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        """Move the WAL into the database file, then close: a server stopped by SIGTERM or
        Ctrl-C left x.db-wal and x.db-shm beside x.db, the recent rows only in the WAL. (The
        last connection to close deletes both; another process's may still be open.)"""
        with self._lock:
            if sqlite_path(self.url) != ":memory:" and not self.read_only:
                with contextlib.suppress(sqlite3.Error):  # busy: the last one to close does it
                    self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.close()


def checkpoint_sqlite(url: str) -> None:
    """Checkpoint and close an SQLite store after every process that wrote to it stopped
    (``nimbleml serve --workers N``: two workers closing at once may each see the other's
    connection, and both leave the -wal and -shm files). A file that is not there is left
    alone."""
    path = sqlite_path(url)
    if path == ":memory:" or not Path(path).is_file():
        return
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()


def _open_read_only(path: str) -> sqlite3.Connection:
    """An existing nimbleml SQLite store, opened so that nothing can be written to it."""
    if not Path(path).is_file():
        raise ConfigError(f"monitor store not found: {path}")
    # a store with no -wal beside it has no writer and all its rows in the file: opened as
    # immutable, SQLite creates no -wal/-shm (a read-only connection cannot remove them)
    quiet = not Path(f"{path}-wal").exists()
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro{'&immutable=1' if quiet else ''}",
                           uri=True, check_same_thread=False, isolation_level=None)  # fmt: skip
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ConfigError(
            f"{path} is not an SQLite database ({exc}); pass a nimbleml monitor store"
        ) from None
    if not {"predictions", "windows"} <= names:
        conn.close()
        raise ConfigError(
            f"{path} is not a nimbleml monitor store (it has no 'windows' and 'predictions' "
            "tables); pass the file a ModelMonitor or nimbleml serve --monitor-store wrote"
        )
    return conn


class PostgresStore(Store):
    """PostgreSQL for several processes or machines writing to one place (psycopg 3)."""

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        psycopg = require("psycopg", "the PostgreSQL monitor store")
        try:
            self.conn = psycopg.connect(url, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise ConfigError(
                f"cannot connect to the PostgreSQL store {url}: {str(exc).strip()}"
            ) from exc
        with self.conn.transaction():
            for statement in TABLES.format(real="DOUBLE PRECISION", any="TEXT", blob="BYTEA").split(
                ";"
            ):
                if statement.strip():
                    self.conn.execute(statement)
        self._tx: Any = None

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def window_start(self, column: str) -> str:
        return f"FLOOR({column} / %s) * %s"

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self._sql(sql), params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)

    def _rows(
        self, predictions: Sequence[tuple[Any, ...]], labels: Sequence[tuple[Any, ...]]
    ) -> tuple[Sequence[tuple[Any, ...]], Sequence[tuple[Any, ...]]]:
        """Outputs and labels are TEXT columns here: numbers are written as their text."""
        return (
            [(*row[:5], _text(row[5])) for row in predictions],
            [(row[0], _text(row[1]), row[2]) for row in labels],
        )

    def _begin(self) -> None:
        self._tx = self.conn.transaction()
        self._tx.__enter__()

    def _commit(self) -> None:
        self._tx.__exit__(None, None, None)

    def _rollback(self) -> None:
        import sys

        self._tx.__exit__(*sys.exc_info())

    def close(self) -> None:
        with self._lock:
            self.conn.close()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
