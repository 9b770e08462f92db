"""The schema is created on first use and extended in place, keeping existing rows."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text, update

from batchapp.storage import tables
from batchapp.storage.engines import configure_engine
from batchapp.storage.tables import ensure_schema, jobs, metadata

# batch_jobs as an older version had it: without `error`, `finished_at` and `exclusive`, and
# JSON columns (numeric affinity on SQLite).
OLDER_BATCH_JOBS = (
    "CREATE TABLE batch_jobs (id VARCHAR(32) PRIMARY KEY, name VARCHAR(64) NOT NULL,"
    " params JSON NOT NULL, status VARCHAR(16) NOT NULL, chunks_total INTEGER NOT"
    " NULL, chunks_done INTEGER NOT NULL, chunks_failed INTEGER NOT NULL,"
    " items_done BIGINT NOT NULL, items_failed BIGINT NOT NULL, result JSON,"
    " created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)"
)


def test_first_use_creates_every_table(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.sqlite'}")
    configure_engine(engine)
    ensure_schema(engine)

    assert set(inspect(engine).get_table_names()) == set(metadata.tables)


def test_an_older_table_gains_new_nullable_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    configure_engine(engine)
    with engine.begin() as connection:
        connection.execute(text(OLDER_BATCH_JOBS))
        connection.execute(
            text(
                "INSERT INTO batch_jobs VALUES ('j1', 'parallel_sum', '{}', 'succeeded', 1, 1,"
                " 0, 10, 0, '55', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    ensure_schema(engine)

    columns = {c["name"] for c in inspect(engine).get_columns("batch_jobs")}
    indexes = {i["name"] for i in inspect(engine).get_indexes("batch_jobs")}
    with engine.connect() as connection:
        kept = connection.execute(text("SELECT id, result FROM batch_jobs")).all()
        read = connection.execute(select(jobs.c.result)).scalar_one()
    assert {"error", "finished_at", "exclusive"} <= columns
    assert "ix_batch_jobs_status_updated_at" in indexes
    assert kept == [("j1", 55)]
    assert read == 55


def test_integers_past_64_bits_come_back_exact_from_an_older_json_column(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    configure_engine(engine)
    ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE batch_jobs"))
        connection.execute(text(OLDER_BATCH_JOBS))
        connection.execute(
            text(
                "INSERT INTO batch_jobs VALUES ('j1', 'parallel_sum', '{}', 'running', 1, 0,"
                " 0, 0, 0, NULL, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    with engine.begin() as connection:
        connection.execute(update(jobs).values(result=2**70 + 1))
        stored = connection.execute(select(jobs.c.result)).scalar_one()

    assert stored == 2**70 + 1
    assert isinstance(stored, int)


def test_an_older_ledger_gains_job_keys_and_executions_in_place(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    configure_engine(engine)
    with engine.begin() as connection:
        connection.execute(text(OLDER_BATCH_JOBS))
    ensure_schema(engine)

    inspector = inspect(engine)
    columns = {c["name"] for c in inspector.get_columns("batch_jobs")}
    unique = {i["name"]: i["unique"] for i in inspector.get_indexes("batch_jobs")}
    assert "job_key" in columns
    assert unique["ux_batch_jobs_name_key_live"]
    assert "batch_executions" in inspector.get_table_names()


def test_a_complete_schema_is_checked_without_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "held.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    configure_engine(engine)
    ensure_schema(engine)
    monkeypatch.setattr(tables, "_prepared", set())  # a process that has not checked it yet
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer paused inside its transaction
    try:
        started = time.monotonic()
        ensure_schema(engine)
        took = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    # Before, it waited for the write lock: 5 tries of the 30 s busy timeout.
    assert took < 5
