"""The one place a job's status and counters change, always under the job row's lock.

Callers open a write transaction, :func:`lock_job`, change chunk rows through
:func:`move_chunks`, and end with :func:`settle`, which derives the job's counts from its
chunk rows and finishes the job when no chunk is left to run. Counts are never carried by
hand, so no interleaving of deliveries, failures, retries and cancels can make them drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from batchapp.jobs import get_job
from batchapp.jobs.base import JSON, utcnow
from batchapp.ledger import locks, statements
from batchapp.ledger.states import (
    CANCELLED,
    CHUNK_MOVES,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UnknownJobError,
    check_job_move,
)
from batchapp.tables import chunks, jobs

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


def move_chunks(
    connection: Connection, job: LockedJob, current: str, new: str, **values: Any
) -> list[int]:
    """Move the job's chunks in ``current`` to ``new``; returns their indexes."""
    if new not in CHUNK_MOVES[current]:
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
    """Change the job's status if the transition table allows it (else JobStateError)."""
    check_job_move(job.id, job.status, new, what)
    now = utcnow()
    finished = new in FINISHED
    values |= {"status": new, "updated_at": now, "finished_at": now if finished else None}
    connection.execute(update(jobs).where(jobs.c.id == job.id).values(values))
    if finished:
        locks.release(connection, job.id)
    return LockedJob(job.id, job.name, job.params, new, job.chunks_total, job.exclusive)


def settle(connection: Connection, job: LockedJob) -> LockedJob:
    """Derive the job's counts from its chunks; a running job with none left to run finishes."""
    key = {"b_job_id": job.id}
    not_done: dict[str, int] = {
        status: count for status, count in connection.execute(statements.COUNT_NOT_DONE, key)
    }
    done, items_done, items_failed = connection.execute(statements.SUM_DONE, key).one()
    failed = not_done.get(FAILED, 0)
    connection.execute(
        statements.SET_COUNTS,
        {
            "b_job_id": job.id,
            "b_done": done,
            "b_failed": failed,
            "b_items_done": items_done,
            "b_items_failed": items_failed,
            "b_now": utcnow(),
        },
    )
    if job.status != RUNNING or not_done.get(PENDING) or not_done.get(CANCELLED):
        return job
    if failed:
        first = connection.execute(
            select(chunks.c.idx, chunks.c.error)
            .where(chunks.c.job_id == job.id, chunks.c.status == FAILED)
            .order_by(chunks.c.idx)
            .limit(1)
        ).one()
        error = f"{failed} chunk(s) failed; chunk {first.idx}: {first.error}"[:ERROR_KEEP]
        return move_job(connection, job, FAILED, "it cannot fail", error=error)
    outputs = connection.execute(
        select(chunks.c.output).where(chunks.c.job_id == job.id).order_by(chunks.c.idx)
    ).scalars()
    result = get_job(job.name).reduce(job.params, list(outputs))
    return move_job(connection, job, SUCCEEDED, "it cannot succeed", result=result, error=None)
