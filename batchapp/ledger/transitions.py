"""The one place a job's status and counters change, always under the job row's lock.

Callers open a write transaction, :func:`lock_job`, change chunk rows, and end with
:func:`settle` (which finishes the job when no chunk is left to run) or :func:`move_job`.
A chunk's commit is the exception that keeps one job's chunks committing side by side: it
changes only its own chunk row (:func:`finish_chunk`, guarded by that row's status) and, once
committed, :func:`finish_if_last` takes the job's lock only if no chunk is left to run.
A job's counts are derived from its chunk rows whenever its status changes (and whenever a
running job is read, see views.py), never carried by hand, so no interleaving of deliveries,
failures, retries and cancels can make them drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from batchapp.jobs import get_job
from batchapp.jobs.base import JSON, ChunkOutcome, utcnow
from batchapp.ledger import locks, statements
from batchapp.ledger.counts import derive
from batchapp.ledger.states import (
    CHUNK_MOVES,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UnknownJobError,
    check_job_move,
)
from batchapp.storage.engines import in_transaction, read_row
from batchapp.storage.tables import chunks, executions, jobs

ERROR_KEEP = 2000


@dataclass(frozen=True)
class LockedJob:
    """A job row read under its lock: what a transition needs to know."""

    id: str
    name: str
    params: dict[str, JSON]
    status: str
    chunks_total: int
    exclusive: bool


def lock_job(connection: Connection, job_id: str) -> LockedJob:
    """Lock the job's row until the transaction ends; :class:`UnknownJobError` if it is gone."""
    row = connection.execute(statements.LOCK_JOB, {"b_job_id": job_id}).first()
    if row is None:
        raise UnknownJobError(f"no job with id {job_id!r}")
    return LockedJob(
        id=row.id,
        name=row.name,
        params=row.params,
        status=row.status,
        chunks_total=row.chunks_total,
        exclusive=bool(row.exclusive),
    )


def chunk_state(connection: Connection, job: LockedJob, index: int) -> Any:
    """The chunk's status and deliveries (read under the job's lock)."""
    return connection.execute(statements.CHUNK_STATE, {"b_job_id": job.id, "b_idx": index}).first()


def chunk_may_move(current: str | None, new: str) -> bool:
    """Whether a chunk in ``current`` (None: no such chunk) may go to ``new``."""
    return current is not None and new in CHUNK_MOVES[current]


def finish_chunk(
    connection: Connection, job_id: str, index: int, outcome: ChunkOutcome, *, redelivered: bool
) -> bool:
    """Record the chunk done, with what its work produced, if it is pending; returns whether
    it was (else nothing changed). Takes no job lock: call :func:`finish_if_last` after the
    commit."""
    done = connection.execute(
        statements.CHUNK_DONE,
        {
            "b_job_id": job_id,
            "b_idx": index,
            "b_redelivered_now": redelivered,
            "b_items_done": outcome.items_done,
            "b_items_failed": outcome.items_failed,
            "b_output": outcome.output,
            "b_finished_at": utcnow(),
        },
    )
    return bool(done.rowcount)


def move_chunks(
    connection: Connection, job: LockedJob, current: str, new: str, **values: Any
) -> list[int]:
    """Move the job's chunks in ``current`` to ``new``; returns their indexes."""
    if not chunk_may_move(current, new):
        raise ValueError(f"a chunk cannot go from {current} to {new}")
    return list(
        connection.execute(
            update(chunks)
            .where(chunks.c.job_id == job.id, chunks.c.status == current)
            .values(status=new, **values)
            .returning(chunks.c.idx)
        ).scalars()
    )


def fail_chunk(
    connection: Connection, job: LockedJob, index: int, reason: str, *, redelivered: bool
) -> None:
    """Record a pending chunk's failure with its reason."""
    connection.execute(
        update(chunks)
        .where(chunks.c.job_id == job.id, chunks.c.idx == index, chunks.c.status == PENDING)
        .values(
            status=FAILED,
            attempts=chunks.c.attempts + 1,
            redelivered=chunks.c.redelivered | redelivered,
            error=reason[:ERROR_KEEP],
            finished_at=utcnow(),
        )
    )


def move_job(
    connection: Connection, job: LockedJob, new: str, what: str, **values: Any
) -> LockedJob:
    """Change the job's status if the transition table allows it (else JobStateError), with
    its counts derived from its chunks."""
    check_job_move(job.id, job.status, new, what)
    now = utcnow()
    finished = new in FINISHED
    counts = derive(connection, job.id)
    values |= counts.job_values()
    values |= {"status": new, "updated_at": now, "finished_at": now if finished else None}
    if new == RUNNING:
        # Before the update: a job from before executions has its first run read from its row.
        start_execution(connection, job.id, "retry", now)
    connection.execute(update(jobs).where(jobs.c.id == job.id).values(values))
    if finished:
        locks.release(connection, job.id)
        end_execution(connection, job.id, new, values.get("error"), counts.done, counts.failed, now)
    return LockedJob(job.id, job.name, job.params, new, job.chunks_total, job.exclusive)


def start_execution(connection: Connection, job_id: str, started_by: str, now: datetime) -> int:
    """Record that a run of the job starts (at submit, or a retry's move to running), in the
    transaction that sets it running; returns its number, from 1.

    A job recorded before executions existed gets its first run written from its row first.
    """
    last = connection.execute(
        select(func.max(executions.c.number)).where(executions.c.job_id == job_id)
    ).scalar()
    if last is None and started_by != "submit":
        earlier = connection.execute(select(jobs).where(jobs.c.id == job_id)).one()
        connection.execute(
            insert(executions).values(
                job_id=job_id,
                number=1,
                started_by="submit",
                started_at=earlier.created_at,
                finished_at=earlier.finished_at or earlier.updated_at,
                outcome=earlier.status,
                chunks_done=earlier.chunks_done,
                chunks_failed=earlier.chunks_failed,
                error=earlier.error,
            )
        )
        last = 1
    number = (last or 0) + 1
    connection.execute(
        insert(executions).values(
            job_id=job_id, number=number, started_by=started_by, started_at=now
        )
    )
    return number


def end_execution(
    connection: Connection,
    job_id: str,
    outcome: str,
    error: str | None,
    done_now: int,
    failed_now: int,
    now: datetime,
) -> None:
    """Close the job's open run with how it ended, in the transaction that finishes the job.

    Its chunks are those that finished during it: a failed chunk is always this run's (a retry
    sets failed chunks pending before its run starts), and a done chunk is this run's unless an
    earlier run counted it (a done chunk never changes again).
    """
    done_before = connection.execute(
        select(func.coalesce(func.sum(executions.c.chunks_done), 0)).where(
            executions.c.job_id == job_id, executions.c.finished_at.is_not(None)
        )
    ).scalar_one()
    connection.execute(
        update(executions)
        .where(executions.c.job_id == job_id, executions.c.finished_at.is_(None))
        .values(
            finished_at=now,
            outcome=outcome,
            error=error,
            chunks_done=done_now - done_before,
            chunks_failed=failed_now,
        )
    )


def finish_if_last(connection: Connection, job_id: str) -> None:
    """After a transaction that took a chunk out of pending committed (outside it: on
    ``connection``, which holds none): finish the job if no chunk is left to run.

    Asked after the commit, not inside it, so of the last chunks committing at the same moment
    at least the one committing last sees that nothing is pending; two that both see it queue
    on the job's lock, and :func:`settle` looks again under it, so the reduce runs once. The
    lock is taken only then, not per chunk. If the process dies in between, the chunk's next
    delivery (which finds it done) or the reconciler finishes the job.
    """
    if any_pending(connection, job_id):
        return

    def finish(locked_connection: Connection) -> None:
        try:
            locked = lock_job(locked_connection, job_id)
        except UnknownJobError:
            return  # removed by cleanup meanwhile
        if locked.status == RUNNING:
            settle(locked_connection, locked)

    in_transaction(connection, finish, write=True)


def any_pending(connection: Connection, job_id: str) -> bool:
    """Whether the job has a chunk left to run, as committed now (``connection`` holds no
    transaction)."""
    key = {"b_job_id": job_id}
    return read_row(connection, statements.ANY_PENDING, key) is not None


def settle(connection: Connection, job: LockedJob) -> LockedJob:
    """After its chunks changed: a running job with no chunk left to run finishes (reduce or
    fail); otherwise it is only marked as just moved (the reconciler looks for jobs that don't)."""
    key = {"b_job_id": job.id, "b_now": utcnow()}
    if job.status != RUNNING:
        connection.execute(statements.TOUCH_JOB, key)
        return job
    if connection.execute(statements.TOUCH_JOB_IF_PENDING, key).rowcount:
        return job
    failed = connection.execute(
        select(chunks.c.idx, chunks.c.error)
        .where(chunks.c.job_id == job.id, chunks.c.status == FAILED)
        .order_by(chunks.c.idx)
    ).all()
    if failed:
        first = failed[0]
        error = f"{len(failed)} chunk(s) failed; chunk {first.idx}: {first.error}"[:ERROR_KEEP]
        return move_job(connection, job, FAILED, "it cannot fail", error=error)
    outputs = connection.execute(
        select(chunks.c.output).where(chunks.c.job_id == job.id).order_by(chunks.c.idx)
    ).scalars()
    result = get_job(job.name).reduce(job.params, list(outputs))
    return move_job(connection, job, SUCCEEDED, "it cannot succeed", result=result, error=None)
