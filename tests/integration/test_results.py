"""batchapp's result backend on PostgreSQL, and on SQLite under a live worker.

PostgreSQL runs here with its sessions in Asia/Seoul, so a time stored or compared in the wrong
zone is nine hours off; the SQLite file is replaced and deleted under a live worker. The tests of
tests/unit/test_results.py that take a ``url`` are collected here again, on PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy.dialects.postgresql.base
from celery import states
from sqlalchemy import create_engine, text
from sqlalchemy.dialects.postgresql import psycopg2
from sqlalchemy.pool import NullPool

from batchapp.celery import app, settings
from batchapp.cli.processes import CeleryProcess
from batchapp.internals.result_backend import DatabaseBackend
from batchapp.storage import engines as db
from batchapp.storage.engines import engine_for
from batchapp.tasks import calculate_sum
from tests.integration.conftest import RESULT_TIMEOUT, Stack, _psql
from tests.unit.test_results import (  # noqa: F401 - collected here, with url on PostgreSQL
    stock_backend,
    test_a_later_failure_does_not_replace_success,
    test_a_refused_unknown_task_is_read_only_by_the_caller_that_sent_that_name,
    test_a_stored_result_reads_back_with_its_time,
    test_a_wait_on_sqlite_reads_only_after_a_commit,
    test_an_unknown_task_is_pending,
    test_cleanup_keeps_a_fresh_result_and_removes_an_expired_one,
    test_date_done_is_stored_and_read_as_celerys_own_backend_does,
    test_rows_of_a_table_from_before_children_still_read,
)


@pytest.fixture(scope="module")
def seoul_postgres_url(postgres_url: str) -> str:
    """The module's PostgreSQL database, whose sessions run in Asia/Seoul rather than UTC."""
    database = postgres_url.rsplit("/", 1)[1]
    _psql(f"ALTER DATABASE \"{database}\" SET timezone TO 'Asia/Seoul'")
    return postgres_url


@pytest.fixture(params=["postgresql"])
def url(seoul_postgres_url: str) -> str:
    return seoul_postgres_url


@pytest.fixture
def backend(url: str) -> DatabaseBackend:
    return DatabaseBackend(app=app, url=url)


def test_postgresql_urls_use_psycopg_where_sqlalchemy_would_pick_psycopg2(
    seoul_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLAlchemy 2.0.x maps a driverless postgresql:// to psycopg2, which batchapp does not
    # install; make this SQLAlchemy do the same.
    monkeypatch.setattr(sqlalchemy.dialects.postgresql.base, "dialect", psycopg2.dialect)
    url = f"{seoul_postgres_url}?application_name=batchapp-driver-test"
    task_id = uuid.uuid4().hex
    backend = DatabaseBackend(app=app, url=url)
    backend.store_result(task_id, 5050, states.SUCCESS)

    assert backend.get_task_meta(task_id)["result"] == 5050
    with engine_for(url).connect() as connection:
        assert connection.dialect.driver == "psycopg"
        assert connection.execute(text("SELECT 1")).scalar() == 1


def test_watch_changes_on_postgresql_says_read_every_time(postgres_url: str) -> None:
    with db.watch_changes(engine_for(postgres_url)) as changed:
        assert changed is None


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[CeleryProcess]:
    yield stack.worker()


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_results_keep_coming_after_the_results_file_is_deleted_or_replaced(
    worker: CeleryProcess, change: str, tmp_path: Path
) -> None:
    results_file = Path(settings.result_backend.removeprefix("db+sqlite:///"))
    assert calculate_sum.delay(10).get(timeout=RESULT_TIMEOUT) == 55  # pooled on both sides

    files = [results_file.with_name(results_file.name + suffix) for suffix in ("", "-wal", "-shm")]
    if change == "deleted":
        for path in files:
            path.unlink(missing_ok=True)
    else:
        other = tmp_path / "other.sqlite"
        stock_backend(f"sqlite:///{other}")  # an empty results database, made by Celery
        for path in files[1:]:
            path.unlink(missing_ok=True)
        os.replace(other, results_file)

    assert calculate_sum.delay(100).get(timeout=RESULT_TIMEOUT) == 5050
    reader = create_engine(f"sqlite:///{results_file}", poolclass=NullPool)
    with reader.connect() as connection:
        rows = connection.execute(text("SELECT count(*) FROM celery_taskmeta")).scalar()
    assert rows == 1  # the new file holds the result written after the change, and only it
