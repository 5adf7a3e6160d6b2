"""Baseline: a bare SQLite transaction loop, the most commits a second this disk allows with the
services' settings (WAL, synchronous=FULL, BEGIN IMMEDIATE). A unit of work can commit no
faster one at a time, so the registration rate beside it shows what batching wins."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bench.stats import median

# About an outbox row's size: the loop measures the commit (the fsync), not the row.
ROW = b"x" * 256


def _loop(path: Path, duration_s: float) -> float:
    """Commits per second of one INSERT per BEGIN IMMEDIATE ... COMMIT, for `duration_s`."""
    # isolation_level=None: no implicit transactions from the sqlite3 module, so the loop
    # issues exactly the statements the services' write path does.
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL as in services.runtime.db: WAL fsyncs on every commit, the durability the
        # outbox promise needs; NORMAL would skip it and measure another machine.
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        commits = 0
        start = time.perf_counter()
        deadline = start + duration_s
        while time.perf_counter() < deadline:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO rows (payload) VALUES (?)", (ROW,))
            connection.execute("COMMIT")
            commits += 1
        return commits / (time.perf_counter() - start)
    finally:
        connection.close()


def sqlite_txn_per_s(directory: Path, duration_s: float, repeats: int) -> float:
    """The median over `repeats` of committed transactions per second, on a file in `directory`
    (the run's temporary directory: the same disk as the suite's databases)."""
    path = directory / "bench-sqlite-txn.db"
    try:
        return median([_loop(path, duration_s) for _ in range(repeats)])
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
