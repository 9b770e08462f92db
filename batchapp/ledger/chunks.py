"""Running a chunk once in effect, and recording a chunk that failed or keeps killing workers.

A chunk's work is done outside any transaction (``prepare``); then one write transaction
writes its output, takes the job's lock, and marks the chunk done only if it is still pending,
else rolls the output back. So a chunk delivered twice, even at the same moment, writes its
output once, and the transaction that finishes the last chunk runs the reduce.
"""

from __future__ import annotations

import traceback

from batchapp.jobs import JobContext, get_job
from batchapp.jobs.base import Chunk, utcnow
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
    lock_job,
    move_chunks,
    move_job,
    settle,
)
from batchapp.storage.engines import read_transaction, write_transaction
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
    with read_transaction(ctx.engine) as connection:
        found = connection.execute(statements.FIND_CHUNK, key).first()
    if found is None:
        raise UnknownJobError(f"job {job_id} chunk {index} is not in the ledger")
    try:
        if not chunk_may_move(found.status, DONE):
            raise _Dropped(_WHY_DROPPED[found.status])
        if redelivered or (delivery or 0) > 1:
            _count_delivery(ctx, job_id, index, delivery)
        if found.exclusive:
            _claim_periodic_lock(ctx, job_id)
        job = get_job(found.name)
        prepared = job.prepare(found.params, found.spec, ctx)
        with write_transaction(ctx.engine) as connection:
            outcome = job.commit(connection, Chunk(job_id, found.params, found.spec, prepared), ctx)
            locked = lock_job(connection, job_id)
            if not finish_chunk(connection, locked, index, outcome, redelivered=redelivered):
                # Raising rolls back the output written above.
                state = chunk_state(connection, locked, index)
                raise _Dropped(_WHY_DROPPED[state and state.status])
            settle(connection, locked)
    except _Dropped as dropped:
        return f"job {job_id} chunk {index} {dropped}"
    except UnknownJobError:
        return f"job {job_id} chunk {index} {_WHY_DROPPED[None]}"
    return (
        f"job {job_id} chunk {index} done: "
        f"{outcome.items_done} items, {outcome.items_failed} failed"
    )


def record_chunk_failure(
    ctx: JobContext,
    job_id: str,
    index: int,
    exc: BaseException | str,
    *,
    redelivered: bool = False,
) -> None:
    """Mark a pending chunk failed with the reason; the job fails when no chunk is left to run."""
    if isinstance(exc, BaseException):
        reason = "".join(traceback.format_exception_only(exc)).strip()
    else:
        reason = exc
    with write_transaction(ctx.engine) as connection:
        try:
            locked = lock_job(connection, job_id)
        except UnknownJobError:
            return
        state = chunk_state(connection, locked, index)
        if not chunk_may_move(state and state.status, FAILED):
            return
        fail_chunk(connection, locked, index, reason, redelivered=redelivered)
        settle(connection, locked)


def _count_delivery(ctx: JobContext, job_id: str, index: int, delivery: int | None) -> None:
    """Count a redelivery; past ``max_deliveries`` the chunk fails instead of running again."""
    limit = ctx.settings.max_deliveries
    with write_transaction(ctx.engine) as connection:
        locked = lock_job(connection, job_id)
        state = chunk_state(connection, locked, index)
        if not chunk_may_move(state and state.status, DONE):
            raise _Dropped(_WHY_DROPPED[state and state.status])
        seen = max((state.deliveries or 1) + 1, delivery or 0)
        if seen <= limit:
            connection.execute(
                statements.COUNT_DELIVERY,
                {"b_job_id": job_id, "b_idx": index, "b_deliveries": seen},
            )
            return
        reason = (
            f"worker lost {seen - 1} times: its process died on every delivery "
            f"(BATCHAPP_MAX_DELIVERIES={limit})"
        )
        fail_chunk(connection, locked, index, reason, redelivered=True)
        settle(connection, locked)
    raise _Dropped(f"failed: {reason}")


def _claim_periodic_lock(ctx: JobContext, job_id: str) -> None:
    """Hold the job's lock from now on; a run whose lock a later run took steps aside."""
    with write_transaction(ctx.engine) as connection:
        locked = lock_job(connection, job_id)
        if locked.status != RUNNING:
            raise _Dropped(f"belongs to a job that is {locked.status}; dropped")
        ttl = locks.lock_ttl(ctx.settings)
        holder = locks.take(connection, locked.name, job_id, utcnow(), ttl)
        if holder is None:
            return
        move_chunks(connection, locked, PENDING, CANCELLED)
        move_job(
            connection,
            locked,
            SKIPPED,
            "it cannot be skipped",
            error=f"skipped: the run {holder} took over while this one waited in the queue",
        )
    raise _Dropped(f"skipped: the run {holder} of the same job holds its lock")
