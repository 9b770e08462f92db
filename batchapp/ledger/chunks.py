"""Running a chunk once in effect, and recording a chunk that failed or keeps killing workers.

A chunk's work is done outside any transaction (``prepare``); then one write transaction
writes its output and marks the chunk done only if it is still pending, else rolls the output
back. So a chunk delivered twice, even at the same moment, writes its output once. That
transaction locks only the chunk's own row, so a job's chunks commit side by side; after it,
the chunk that finds no chunk left to run takes the job's lock and runs the reduce
(transitions.finish_if_last). A chunk checks out one connection for all of this.
"""

from __future__ import annotations

import traceback

from sqlalchemy import Connection

from batchapp.jobs import JobContext, get_job
from batchapp.jobs.base import Chunk, ChunkOutcome, Job, utcnow
from batchapp.ledger import locks, statements
from batchapp.ledger.states import (
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    UnknownJobError,
)
from batchapp.ledger.transitions import (
    chunk_may_move,
    chunk_state,
    fail_chunk,
    finish_chunk,
    finish_if_last,
    lock_job,
    move_chunks,
    move_job,
)
from batchapp.storage.engines import in_transaction, read_row
from batchapp.storage.tables import ensure_schema

_WHY_DROPPED = {
    DONE: "was already done; duplicate delivery dropped",
    FAILED: "has failed; dropped (`batchapp retry` runs it again)",
    CANCELLED: "was cancelled; dropped",
    None: "is not in the ledger (removed by cleanup?); dropped",
}


class _Dropped(Exception):
    """The chunk must not run (any more); the message says why."""


def run_chunk(
    ctx: JobContext,
    job_id: str,
    index: int,
    *,
    redelivered: bool = False,
    delivery: int | None = None,
) -> str:
    """Run chunk ``index`` of a job once in effect; returns what happened, for the log.

    A chunk this ledger does not have is :class:`UnknownJobError`. ``redelivered`` (the
    broker's flag) or ``delivery`` (the broker's count, from 1) says the message came again;
    only then are deliveries counted, so a first delivery costs no extra write. An error
    propagates; the task records it with :func:`record_chunk_failure` once it will not be
    retried.
    """
    ensure_schema(ctx.engine)
    key = {"b_job_id": job_id, "b_idx": index}
    with ctx.engine.connect() as connection:
        found = read_row(connection, statements.FIND_CHUNK, key)
        if found is None:
            raise UnknownJobError(f"job {job_id} chunk {index} is not in the ledger")
        try:
            if found.status == DONE:
                # Its first delivery may have died, or failed to reach the database, between
                # its commit and finishing the job: this one finishes it, at the cost of a probe.
                finish_if_last(connection, job_id)
            if not chunk_may_move(found.status, DONE):
                raise _Dropped(_WHY_DROPPED[found.status])
            if redelivered or (delivery or 0) > 1:
                _count_delivery(ctx, connection, job_id, index, delivery)
            if found.exclusive:
                _claim_periodic_lock(ctx, connection, job_id)
            job = get_job(found.name)
            chunk = Chunk(
                job_id, found.params, found.spec, job.prepare(found.params, found.spec, ctx)
            )
            outcome = in_transaction(
                connection,
                lambda c: _commit(c, ctx, job, chunk, index, redelivered=redelivered),
                write=True,
            )
            finish_if_last(connection, job_id)
        except _Dropped as dropped:
            return f"job {job_id} chunk {index} {dropped}"
        except UnknownJobError:
            return f"job {job_id} chunk {index} {_WHY_DROPPED[None]}"
    return (
        f"job {job_id} chunk {index} done: "
        f"{outcome.items_done} items, {outcome.items_failed} failed"
    )


def _commit(
    connection: Connection,
    ctx: JobContext,
    job: Job,
    chunk: Chunk,
    index: int,
    *,
    redelivered: bool,
) -> ChunkOutcome:
    """Write the chunk's output and mark it done; :class:`_Dropped` (which rolls the output
    back) if it is no longer pending."""
    outcome = job.commit(connection, chunk, ctx)
    if not finish_chunk(connection, chunk.job_id, index, outcome, redelivered=redelivered):
        state = connection.execute(
            statements.CHUNK_STATE, {"b_job_id": chunk.job_id, "b_idx": index}
        ).first()
        raise _Dropped(_WHY_DROPPED[state and state.status])
    return outcome


def record_chunk_failure(
    ctx: JobContext,
    job_id: str,
    index: int,
    exc: BaseException | str,
    *,
    redelivered: bool = False,
) -> None:
    """Mark a pending chunk failed with the reason; the job fails when no chunk is left to run.

    Unlike a chunk's success this takes the job's lock: a retry running at the same moment
    waits for the failure and runs the chunk again, instead of missing it. Failures are rare.
    """
    if isinstance(exc, BaseException):
        reason = "".join(traceback.format_exception_only(exc)).strip()
    else:
        reason = exc

    def fail(connection: Connection) -> bool:
        try:
            locked = lock_job(connection, job_id)
        except UnknownJobError:
            return False
        state = chunk_state(connection, locked, index)
        if not chunk_may_move(state and state.status, FAILED):
            return False
        fail_chunk(connection, locked, index, reason, redelivered=redelivered)
        return True

    with ctx.engine.connect() as connection:
        if in_transaction(connection, fail, write=True):
            finish_if_last(connection, job_id)


def _count_delivery(
    ctx: JobContext, connection: Connection, job_id: str, index: int, delivery: int | None
) -> None:
    """Count a redelivery; past ``max_deliveries`` the chunk fails instead of running again."""
    limit = ctx.settings.max_deliveries

    def count(connection: Connection) -> str | None:
        locked = lock_job(connection, job_id)
        state = chunk_state(connection, locked, index)
        if not chunk_may_move(state and state.status, DONE):
            raise _Dropped(_WHY_DROPPED[state and state.status])
        seen = max((state.deliveries or 1) + 1, delivery or 0)
        if seen <= limit:
            counted = connection.execute(
                statements.COUNT_DELIVERY,
                {"b_job_id": job_id, "b_idx": index, "b_deliveries": seen},
            )
            if not counted.rowcount:
                # Its first delivery committed it while this one waited for the chunk's row.
                state = chunk_state(connection, locked, index)
                raise _Dropped(_WHY_DROPPED[state and state.status])
            return None
        reason = (
            f"worker lost {seen - 1} times: its process died on every delivery "
            f"(BATCHAPP_MAX_DELIVERIES={limit})"
        )
        fail_chunk(connection, locked, index, reason, redelivered=True)
        return reason

    reason = in_transaction(connection, count, write=True)
    if reason is None:
        return
    finish_if_last(connection, job_id)
    raise _Dropped(f"failed: {reason}")


def _claim_periodic_lock(ctx: JobContext, connection: Connection, job_id: str) -> None:
    """Hold the job's lock from now on; a run whose lock a later run took steps aside."""
    holder = in_transaction(connection, lambda c: _take_periodic_lock(ctx, c, job_id), write=True)
    if holder is not None:
        raise _Dropped(f"skipped: the run {holder} of the same job holds its lock")


def _take_periodic_lock(ctx: JobContext, connection: Connection, job_id: str) -> str | None:
    """Take the job's periodic lock, or skip the run and return the run that holds it."""
    locked = lock_job(connection, job_id)
    if locked.status != RUNNING:
        # Raised inside: nothing was changed yet.
        raise _Dropped(f"belongs to a job that is {locked.status}; dropped")
    ttl = locks.lock_ttl(ctx.settings)
    holder = locks.take(connection, locked.name, job_id, utcnow(), ttl)
    if holder is None:
        return None
    move_chunks(connection, locked, PENDING, CANCELLED)
    move_job(
        connection,
        locked,
        SKIPPED,
        "it cannot be skipped",
        error=f"skipped: the run {holder} took over while this one waited in the queue",
    )
    return holder
