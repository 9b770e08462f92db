"""A job's chunks commit without its row lock: the races that design has to win.

Each test forces its interleaving with the database's own locks or with barriers, never with
sleeps. They run on SQLite here and on PostgreSQL (READ COMMITTED, where chunks of one job
really commit side by side) in tests/integration/test_ledger.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, update
from sqlalchemy.exc import OperationalError

from batchapp import ledger
from batchapp.jobs import JOBS, JobContext
from batchapp.jobs.base import utcnow
from batchapp.ledger import chunks as chunks_module
from batchapp.ledger import transitions
from batchapp.settings import load
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import jobs
from tests.interleaving import TIMEOUT, Interleaving
from tests.unit.test_ledger import Published, chunk_statuses, run_all


@pytest.fixture(params=["sqlite"])  # tests/integration/test_ledger.py: the same on PostgreSQL
def ctx(tmp_path: Path) -> JobContext:
    settings = load({"BATCHAPP_DATA_DIR": str(tmp_path)})
    return JobContext(settings=settings, engine=engine_for(settings.database_url))


def counting_reduces(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each parallel_sum reduce from now on, as the number of outputs it reduced."""
    job = JOBS["parallel_sum"]
    reduced: list[int] = []

    def counting_reduce(params: dict[str, object], outputs: list[object]) -> object:
        reduced.append(len(outputs))
        return type(job).reduce(job, params, outputs)

    monkeypatch.setattr(job, "reduce", counting_reduce)
    return reduced


def in_threads(*works: Callable[[], Any]) -> list[Any]:
    """Run each in a thread of its own; their results (or exceptions, raised here)."""
    results: list[Any] = [None] * len(works)

    def run(number: int, work: Callable[[], Any]) -> None:
        try:
            results[number] = work()
        except BaseException as exc:
            results[number] = exc

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in enumerate(works)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread never finished"
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


@contextmanager
def chunk_commits_meet(engine: Engine, parties: int) -> Iterator[None]:
    """Each thread's first write commit waits until ``parties`` threads are at theirs: they
    get there only if no write transaction waits for another's lock (PostgreSQL)."""
    meet = threading.Barrier(parties, timeout=TIMEOUT)
    passed: set[int] = set()

    def at_commit(connection: Any) -> None:
        writes = connection.get_execution_options().get("batchapp_write", False)
        if writes and threading.get_ident() not in passed:
            passed.add(threading.get_ident())
            meet.wait()

    event.listen(engine, "commit", at_commit)
    try:
        yield
    finally:
        event.remove(engine, "commit", at_commit)


def test_the_last_two_chunks_committing_at_once_reduce_exactly_once(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    reduced = counting_reduces(monkeypatch)
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    # Both look for a chunk left to run only once both have committed: both find none.
    both_committed = threading.Barrier(2, timeout=TIMEOUT)
    looked: list[bool] = []
    any_pending = transitions.any_pending

    def after_both_commits(connection: Any, job_id: str) -> bool:
        both_committed.wait()
        found = any_pending(connection, job_id)
        looked.append(found)
        return found

    monkeypatch.setattr(transitions, "any_pending", after_both_commits)
    on_postgres = ctx.engine.dialect.name == "postgresql"
    with chunk_commits_meet(ctx.engine, 2) if on_postgres else _nothing():
        # On PostgreSQL both chunk transactions are open at the same moment: neither waits.
        results = in_threads(
            lambda: ledger.run_chunk(ctx, view.id, 0), lambda: ledger.run_chunk(ctx, view.id, 1)
        )

    assert all("done: 10 items" in result for result in results)
    assert looked == [False, False], "both went for the job's lock"
    done = ledger.get(ctx, view.id)
    assert (done.status, done.result, done.chunks_done, reduced) == ("succeeded", 210, 2, [2])
    assert [run.outcome for run in ledger.executions(ctx, view.id)] == ["succeeded"]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def test_the_last_chunk_committing_while_a_retry_commits_leaves_the_job_running(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    reduced = counting_reduces(monkeypatch)
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    ledger.record_chunk_failure(ctx, view.id, 0, RuntimeError("first try"))
    publish = Published()

    # The chunk commits; finding the failed chunk not pending, it waits for the job's lock,
    # which the retry holds; under it, it sees the retried chunk pending and leaves the job.
    results = Interleaving(ctx.engine).run(
        lambda: ledger.retry(ctx, view.id, publish),
        lambda: ledger.run_chunk(ctx, view.id, 1),
    )

    assert results["first"] == [0, 1]
    assert "done: 10 items" in results["second"]
    assert ledger.get(ctx, view.id).status == "running"
    assert chunk_statuses(ctx, view.id) == ["pending", "done"]
    run_all(ctx, view.id, [0, 1])
    done = ledger.get(ctx, view.id)
    assert (done.status, done.result, done.chunks_failed, reduced) == ("succeeded", 210, 0, [2])


def test_a_redelivery_counted_while_its_first_delivery_commits_runs_once(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    reduced = counting_reduces(monkeypatch)
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())

    # The redelivery's count holds the chunk's row; the first delivery's commit waits for it.
    results = Interleaving(ctx.engine).run(
        lambda: ledger.run_chunk(ctx, view.id, 0, redelivered=True),
        lambda: ledger.run_chunk(ctx, view.id, 0),
    )

    # Either may commit the chunk once the count is in (the redelivery has its work left).
    messages = list(results.values())
    ran = [m for m in messages if m.endswith("chunk 0 done: 10 items, 0 failed")]
    dropped = [m for m in messages if m.endswith("was already done; duplicate delivery dropped")]
    assert (len(ran), len(dropped)) == (1, 1), messages
    ledger.run_chunk(ctx, view.id, 1)
    done = ledger.get(ctx, view.id)
    assert (done.status, done.result, done.items_done, reduced) == ("succeeded", 210, 20, [2])
    first = ledger.chunk_rows(ctx, view.id)[0]
    assert (first.attempts, first.deliveries, first.redelivered) == (1, 2, True)


def test_a_failure_and_the_last_success_committing_at_once_fail_the_job_once(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    both_committed = threading.Barrier(2, timeout=TIMEOUT)
    any_pending = transitions.any_pending

    def after_both_commits(connection: Any, job_id: str) -> bool:
        both_committed.wait()
        return any_pending(connection, job_id)

    monkeypatch.setattr(transitions, "any_pending", after_both_commits)
    in_threads(
        lambda: ledger.record_chunk_failure(ctx, view.id, 0, RuntimeError("boom")),
        lambda: ledger.run_chunk(ctx, view.id, 1),
    )

    failed = ledger.get(ctx, view.id)
    assert (failed.status, failed.chunks_done, failed.chunks_failed) == ("failed", 1, 1)
    assert failed.error == "1 chunk(s) failed; chunk 0: RuntimeError: boom"
    assert [run.outcome for run in ledger.executions(ctx, view.id)] == ["failed"]


def test_the_reconciler_leaves_a_job_whose_chunks_are_committing(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, Published())
    ledger.run_chunk(ctx, view.id, 0)
    with ctx.engine.begin() as connection:
        # The job's row last changed an hour ago; its chunk committed just now.
        connection.execute(
            update(jobs)
            .where(jobs.c.id == view.id)
            .values(updated_at=utcnow() - timedelta(hours=1))
        )
    publish = Published()

    assert ledger.reconcile(ctx, publish) == {}
    assert publish.calls == []


def test_a_chunk_that_could_not_finish_its_job_after_committing_is_finished_by_its_retry(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 10, "chunk_size": 10}, Published())
    finish_if_last = chunks_module.finish_if_last
    calls: list[str] = []

    def unreachable_once(connection: Any, job_id: str) -> None:
        calls.append(job_id)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        finish_if_last(connection, job_id)

    monkeypatch.setattr(chunks_module, "finish_if_last", unreachable_once)
    with pytest.raises(OperationalError):
        ledger.run_chunk(ctx, view.id, 0)
    assert ledger.get(ctx, view.id).status == "running"

    # The task's retry of the same message (or the broker's redelivery).
    again = ledger.run_chunk(ctx, view.id, 0)

    assert "already done; duplicate delivery dropped" in again
    done = ledger.get(ctx, view.id)
    assert (done.status, done.result) == ("succeeded", 55)
