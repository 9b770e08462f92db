"""The tasks around the ledger, without a worker: a failure is recorded through a locked
database, and periodic jobs publish their chunks on the periodic queue.

tests/integration/test_ledger_workers.py runs the ledger's jobs through real workers and beat.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import pytest
from sqlalchemy.exc import OperationalError

from batchapp import ledger, service, tasks
from batchapp.broker import queues


def test_recording_a_failure_retries_a_locked_database(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = service.job_context()
    view = ledger.submit(ctx, "parallel_sum", {"n": 10}, lambda *_: None)
    real = ledger.record_chunk_failure
    calls = []

    def locked_twice(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger, "record_chunk_failure", locked_twice)
    monkeypatch.setattr(tasks.time, "sleep", lambda _: None)
    tasks.record_failure(view.id, 0, TimeoutError("hard time limit"), redelivered=False)

    failed = ledger.get(ctx, view.id)
    assert (len(calls), failed.status) == (3, "failed")
    assert "TimeoutError: hard time limit" in (failed.error or "")


def test_a_chunk_the_locked_ledger_kept_from_committing_is_sent_again_not_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = service.job_context()
    view = ledger.submit(ctx, "parallel_sum", {"n": 10}, lambda *_: None)
    sent: list[tuple[str, list[int], str]] = []

    def locked(*args: object, **kwargs: object) -> str:
        raise OperationalError(
            "BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked")
        )

    def publish(job_id: str, indexes: Sequence[int], queue: str = "") -> None:
        sent.append((job_id, list(indexes), queue))

    monkeypatch.setattr(ledger, "run_chunk", locked)
    monkeypatch.setattr(tasks, "publish_chunks", publish)
    # Its last retry: before, the chunk failed here for "database is locked".
    result = tasks.run_chunk.apply((view.id, 0), retries=tasks.run_chunk.max_retries)

    assert result.successful(), result.result
    assert sent == [(view.id, [0], queues.CHUNKS)]
    assert ledger.get(ctx, view.id).chunks_failed == 0


def test_periodic_jobs_publish_their_chunks_on_the_periodic_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[str, str]] = []

    def publish(job_id: str, indexes: Sequence[int], queue: str = "") -> None:
        sent.append((ledger.get(service.job_context(), job_id).name, queue))

    monkeypatch.setattr(tasks, "publish_chunks", publish)
    tasks.submit_job("report", {})
    failed = tasks.submit_job("parallel_sum", {"n": 10})
    ledger.record_chunk_failure(service.job_context(), failed.id, 0, RuntimeError("x"))
    service.retry_job(failed.id)

    assert sent == [
        ("report", queues.PERIODIC),
        ("parallel_sum", queues.CHUNKS),
        ("parallel_sum", queues.CHUNKS),
    ]
    # publish_chunks names these queues outright: every one of them must be declared.
    assert {queue.name for queue in tasks.app.conf.task_queues} == set(queues.ALL)
