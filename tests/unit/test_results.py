"""batchapp's result backend on SQLite: Celery's table, one upsert, SUCCESS kept.

tests/integration/test_results.py runs the tests that take a ``url`` again on PostgreSQL, and
replaces and deletes the SQLite file under a live worker.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from celery import states
from celery.backends.database import DatabaseBackend as CeleryDatabaseBackend
from celery.exceptions import NotRegistered
from celery.exceptions import TimeoutError as CeleryTimeoutError
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from batchapp.celery import app
from batchapp.internals.result_backend import DatabaseBackend, remember_unserved
from batchapp.storage import engines as db
from batchapp.storage.engines import driver_url, engine_for
from batchapp.storage.results import rejection_id
from tests.support import wait_until


@pytest.fixture(params=["sqlite"])  # tests/integration/test_results.py: the same on PostgreSQL
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.sqlite'}"


@pytest.fixture
def backend(url: str) -> DatabaseBackend:
    return DatabaseBackend(app=app, url=url)


def stock_backend(url: str) -> CeleryDatabaseBackend:
    """Celery's own database backend on the same table, as `celery result` and Flower read it."""
    return CeleryDatabaseBackend(app=app, url=driver_url(url))


def test_a_stored_result_reads_back_with_its_time(backend: DatabaseBackend) -> None:
    task_id = uuid.uuid4().hex
    backend.store_result(task_id, 5050, states.SUCCESS)
    meta = backend.get_task_meta(task_id)

    assert (meta["status"], meta["result"]) == (states.SUCCESS, 5050)
    assert meta["date_done"] is not None


def test_a_refused_unknown_task_is_read_only_by_the_caller_that_sent_that_name(
    backend: DatabaseBackend,
) -> None:
    copied_id, sent_id = uuid.uuid4().hex, uuid.uuid4().hex
    # This process sent 'nope.unknown' under sent_id only; a worker refused that name under
    # both ids, as it does when a publisher copies a caller's id into a forged message.
    remember_unserved(app, sender="nope.unknown", headers={"id": sent_id})
    for task_id in (copied_id, sent_id):
        backend.mark_as_failure(rejection_id(task_id, "nope.unknown"), NotRegistered("nope"))

    assert backend.get_task_meta(copied_id)["status"] == states.PENDING
    sent = backend.get_task_meta(sent_id)
    assert (sent["status"], type(sent["result"])) == (states.FAILURE, NotRegistered)
    assert sent["task_id"] == sent_id


def test_a_later_failure_does_not_replace_success(backend: DatabaseBackend) -> None:
    task_id = uuid.uuid4().hex
    backend.store_result(task_id, 5050, states.SUCCESS)
    backend.store_result(task_id, None, states.FAILURE)

    assert backend.get_task_meta(task_id)["result"] == 5050


def test_an_unknown_task_is_pending(backend: DatabaseBackend) -> None:
    assert backend.get_task_meta(uuid.uuid4().hex)["status"] == states.PENDING


def test_date_done_is_stored_and_read_as_celerys_own_backend_does(
    backend: DatabaseBackend, url: str
) -> None:
    ours, celerys = uuid.uuid4().hex, uuid.uuid4().hex
    stock = stock_backend(url)
    backend.store_result(ours, 1, states.SUCCESS)
    stock.store_result(celerys, 2, states.SUCCESS)

    # Stored a moment apart, so nearly the same time when both are read the same way.
    gap = stock.get_task_meta(celerys)["date_done"] - stock.get_task_meta(ours)["date_done"]
    assert timedelta(0) <= gap < timedelta(minutes=1)
    assert backend.get_task_meta(celerys)["date_done"] == stock.get_task_meta(celerys)["date_done"]
    assert backend.get_task_meta(ours)["date_done"] == stock.get_task_meta(ours)["date_done"]


def test_cleanup_keeps_a_fresh_result_and_removes_an_expired_one(url: str) -> None:
    fresh, old = uuid.uuid4().hex, uuid.uuid4().hex
    two_hours = DatabaseBackend(app=app, url=url, expires=7200)
    one_second = DatabaseBackend(app=app, url=url, expires=1)
    two_hours.store_result(fresh, 1, states.SUCCESS)

    two_hours.cleanup()
    assert two_hours.get_task_meta(fresh)["status"] == states.SUCCESS

    one_second.store_result(old, 2, states.SUCCESS)

    def removed() -> bool:
        one_second.cleanup()
        return bool(one_second.get_task_meta(old)["status"] == states.PENDING)

    wait_until(removed, "the expired result removed")


def test_rows_of_a_table_from_before_children_still_read(backend: DatabaseBackend) -> None:
    task_id = uuid.uuid4().hex
    engine = engine_for(backend.url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE celery_taskmeta DROP COLUMN children"))
        connection.execute(
            text(
                "INSERT INTO celery_taskmeta (id, task_id, status, result) VALUES (:i, :t, :s, :r)"
            ),
            {
                "i": 10**9 + int(time.time() * 1000) % 10**9,
                "t": task_id,
                "s": "SUCCESS",
                "r": b"5050",
            },
        )
    try:
        meta = backend.get_task_meta(task_id)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, 5050)
        later = uuid.uuid4().hex
        backend.store_result(later, 7, states.SUCCESS)
        assert backend.get_task_meta(later)["result"] == 7
    finally:
        blob = "BLOB" if engine.dialect.name == "sqlite" else "BYTEA"
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE celery_taskmeta ADD COLUMN children {blob}"))


def test_engine_options_and_short_lived_sessions_are_honoured(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    pooled = DatabaseBackend(app=app, url=url, engine_options={"pool_size": 2})
    short_lived = DatabaseBackend(app=app, url=url, short_lived_sessions=True)
    task_id = uuid.uuid4().hex
    short_lived.store_result(task_id, 3, states.SUCCESS)

    assert pooled._fast_engine().pool.size() == 2  # type: ignore[union-attr, attr-defined]
    assert isinstance(short_lived._fast_engine().pool, NullPool)  # type: ignore[union-attr]
    assert pooled.get_task_meta(task_id)["result"] == 3


def counting_reads(backend: DatabaseBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every result read ``backend`` makes from now on, by task id."""
    reads: list[str] = []
    read = backend.get_task_meta

    def counted(task_id: str, *args: object, **kwargs: object) -> dict[str, object]:
        reads.append(task_id)
        return read(task_id, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "get_task_meta", counted)
    return reads


def test_a_wait_on_sqlite_reads_only_after_a_commit(
    backend: DatabaseBackend, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = uuid.uuid4().hex
    reads = counting_reads(backend, monkeypatch)
    with pytest.raises(CeleryTimeoutError):
        backend.wait_for(task_id, timeout=0.3)
    # Nothing was committed: SQLite's data_version says so for 9 us a poll, so the result is
    # read once; PostgreSQL cannot tell cheaply and reads on every poll (from 0.5 ms).
    assert len(reads) == 1 if url.startswith("sqlite") else len(reads) > 10

    reads.clear()
    stored: list[bool] = []

    def store_once() -> None:
        if not stored:
            backend.store_result(task_id, 5050, states.SUCCESS)  # another connection commits
            stored.append(True)

    meta = backend.wait_for(task_id, timeout=30, on_interval=store_once)
    assert (meta["status"], meta["result"]) == (states.SUCCESS, 5050)
    assert len(reads) == 2 if url.startswith("sqlite") else len(reads) >= 2


def test_watch_changes_sees_other_connections_commits_and_rereads_each_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(f"sqlite:///{tmp_path / 'watched.sqlite'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    monkeypatch.setattr(db, "WATCH_REREAD_S", 0.2)
    with db.watch_changes(engine) as changed:
        assert changed is not None
        assert (changed(), changed()) == (True, False)
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert (changed(), changed()) == (True, False)
        started = time.monotonic()
        wait_until(changed, "a reread after WATCH_REREAD_S", timeout=5)
        assert time.monotonic() - started >= 0.2


def test_a_raw_sqlite_write_rolls_back_on_error_and_errors_are_sqlalchemys(
    tmp_path: Path,
) -> None:
    engine = engine_for(f"sqlite:///{tmp_path / 'raw.sqlite'}")
    with db.sqlite_cursor(engine, write=True) as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    with pytest.raises(RuntimeError), db.sqlite_cursor(engine, write=True) as cursor:
        cursor.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("the caller failed after writing")
    missing = pytest.raises(OperationalError, match="no such table: missing")
    with missing, db.sqlite_cursor(engine, write=False) as cursor:
        cursor.execute("SELECT * FROM missing")
    with db.sqlite_cursor(engine, write=False) as cursor:
        assert cursor.execute("SELECT count(*) FROM t").fetchone() == (0,)
