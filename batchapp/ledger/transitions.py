"""The one place a job's status and counters change, always under the job row's lock.

Callers open a write transaction, :func:`lock_job`, change chunk rows, and end with
:func:`settle` (which finishes the job when no chunk is left to run) or :func:`move_job`.
A job's counts are derived from its chunk rows whenever its status changes (and whenever a
running job is read, see views.py), never carried by hand, so no interleaving of deliveries,
failures, retries and cancels can make them drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

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
from batchapp.storage.tables import chunks, jobs

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
    connection: Connection, job: LockedJob, index: int, outcome: ChunkOutcome, *, redelivered: bool
) -> bool:
    """Record the chunk done, with what its work produced, if it is pending; returns whether
    it was (else nothing changed)."""
    done = connection.execute(
        statements.CHUNK_DONE,
        {
            "b_job_id": job.id,
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
    values |= derive(connection, job.id).job_values()
    values |= {"status": new, "updated_at": now, "finished_at": now if finished else None}
    connection.execute(update(jobs).where(jobs.c.id == job.id).values(values))
    if finished:
        locks.release(connection, job.id)
    return LockedJob(job.id, job.name, job.params, new, job.chunks_total, job.exclusive)


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
