"""batchapp's result backend on each database: Celery's table, one upsert, SUCCESS kept."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from celery import states

from batchapp.celery import app
from batchapp.results import DatabaseBackend


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> DatabaseBackend:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    return DatabaseBackend(app=app, url=url)


def test_a_stored_result_reads_back_with_its_time(backend: DatabaseBackend) -> None:
    task_id = uuid.uuid4().hex
    backend.store_result(task_id, 5050, states.SUCCESS)
    meta = backend.get_task_meta(task_id)

    assert (meta["status"], meta["result"]) == (states.SUCCESS, 5050)
    assert meta["date_done"] is not None


def test_a_later_failure_does_not_replace_success(backend: DatabaseBackend) -> None:
    task_id = uuid.uuid4().hex
    backend.store_result(task_id, 5050, states.SUCCESS)
    backend.store_result(task_id, None, states.FAILURE)

    assert backend.get_task_meta(task_id)["result"] == 5050


def test_an_unknown_task_is_pending(backend: DatabaseBackend) -> None:
    assert backend.get_task_meta(uuid.uuid4().hex)["status"] == states.PENDING
