"""Where a study lives: a journal file on this host (journal.py makes it safe against killed
writers) or a database URL (PostgreSQL, with Optuna's heartbeat for the trials of a worker
that died). Used by tune (study.py) and the architecture search (nas.py)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def storage_url(storage: str | None, name: str, workers: int) -> str:
    """The storage to use, as a URL or a journal file path."""
    if storage is None:
        return str(Path(f"{name}.journal").resolve())
    if storage.startswith("sqlite") and workers > 1:
        raise ConfigError(
            f"storage {storage} with workers={workers}: SQLite locks under parallel workers "
            "('database is locked'); give a .journal file (one host) or postgresql://"
        )
    return storage


def shown(url: str) -> str:
    """A storage URL fit to print: without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(optuna: Any, url: str, heartbeat_s: float) -> Any:
    """Optuna's storage for ``url``: a journal file (checked, repaired, its writes owned:
    journal.py) or a database with a heartbeat."""
    if "://" not in url:
        from .journal import open_journal

        return open_journal(optuna, url)
    driver_url = url
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None:  # psycopg 3 is what nimbleml ships
            driver_url = "postgresql+psycopg://" + url[len("postgresql://") :]
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from sqlalchemy.pool import NullPool

    try:
        with warnings.catch_warnings():  # the heartbeat retry is "experimental" since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                driver_url,
                heartbeat_interval=max(1, int(heartbeat_s)),
                grace_period=max(2, int(2 * heartbeat_s)),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                # no idle pooled connections left open behind a study that is done with
                engine_kwargs={"poolclass": NullPool},
            )
    except Exception as exc:  # sqlalchemy's OperationalError and kin: the server, the URL
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot open the study storage {shown(url)}: {first}") from None
