"""SQLite's WAL stays bounded: what a reader held back is given back at the next write."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from batchapp.storage import engines
from batchapp.storage.engines import engine_for, write_transaction

LIMIT = 1024 * 1024


def write_blobs(url: str, count: int, size: int) -> None:
    for _ in range(count):
        with write_transaction(engine_for(url)) as connection:
            connection.exec_driver_sql("INSERT INTO blobs VALUES (?)", (os.urandom(size),))


def test_a_wal_a_reader_held_back_shrinks_at_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "WAL_LIMIT_BYTES", LIMIT, raising=False)
    path = tmp_path / "ledger.sqlite"
    url = f"sqlite:///{path}"
    wal = Path(f"{path}-wal")
    with write_transaction(engine_for(url)) as connection:
        connection.exec_driver_sql("CREATE TABLE blobs (data BLOB)")
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        # An outside reader in a read transaction: no checkpoint may pass its snapshot.
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM blobs").fetchone()
        write_blobs(url, 40, 100_000)
        held = wal.stat().st_size
        reader.execute("COMMIT")
        write_blobs(url, 1, 10)
        after = wal.stat().st_size if wal.exists() else 0
    finally:
        reader.close()
        engine_for(url).dispose()

    assert held > 4 * LIMIT
    assert after <= LIMIT
