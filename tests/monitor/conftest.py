"""A real PostgreSQL server for the fleet store, started from Debian's postgresql package."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.fail(
            "PostgreSQL is not installed: run `make test` (it installs it) or apt-get install postgresql"
        )
    bindir = bins[-1]
    root = tempfile.mkdtemp(prefix="nimble-pg-")
    data, sockets = os.path.join(root, "data"), os.path.join(root, "sock")
    os.makedirs(sockets)
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=120)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "nimble", "--no-sync")
    run(f"{bindir}/pg_ctl", "-D", data, "-w", "-t", "60", "-l", os.path.join(root, "log"),
        "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start")  # fmt: skip
    try:
        yield f"postgresql://nimble@127.0.0.1:{port}/postgres"
    finally:
        run(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_store(postgres_url):
    """The server's store, emptied for each test."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for table in ("predictions", "labels", "windows", "resources", "alerts"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    return postgres_url
