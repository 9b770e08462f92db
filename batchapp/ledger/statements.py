"""The statements every chunk runs, built once: building them per call cost more than SQLite."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    bindparam,
    cast,
    exists,
    func,
    select,
    update,
)

from batchapp.ledger.states import DONE, PENDING
from batchapp.storage.tables import chunks, jobs

FIND_CHUNK = (
    select(
        jobs.c.name,
        jobs.c.params,
        jobs.c.exclusive,
        chunks.c.spec,
        chunks.c.status,
    )
    .join(chunks, chunks.c.job_id == jobs.c.id)
    .where(jobs.c.id == bindparam("b_job_id"), chunks.c.idx == bindparam("b_idx"))
)

# FOR UPDATE holds the job row on PostgreSQL; on SQLite the write transaction (BEGIN IMMEDIATE)
# already holds the whole database. A chunk takes it only when its job may change state.
LOCK_JOB = (
    select(
        jobs.c.id,
        jobs.c.name,
        jobs.c.params,
        jobs.c.status,
        jobs.c.chunks_total,
        jobs.c.exclusive,
    )
    .where(jobs.c.id == bindparam("b_job_id"))
    .with_for_update()
)

CHUNK_STATE = select(chunks.c.status, chunks.c.deliveries).where(
    chunks.c.job_id == bindparam("b_job_id"), chunks.c.idx == bindparam("b_idx")
)

# Only a pending chunk becomes done (states.CHUNK_MOVES): the row count says whether it was.
# The chunk's own row is the guard: a second delivery, a cancel or a failure of the same chunk
# waits for this row (PostgreSQL re-reads it after the wait, in READ COMMITTED) and then finds
# it no longer pending; no other chunk of the job waits.
CHUNK_DONE = (
    update(chunks)
    .where(
        chunks.c.job_id == bindparam("b_job_id"),
        chunks.c.idx == bindparam("b_idx"),
        chunks.c.status == PENDING,
    )
    .values(
        status=DONE,
        attempts=chunks.c.attempts + 1,
        redelivered=chunks.c.redelivered | bindparam("b_redelivered_now", type_=Boolean),
        items_done=bindparam("b_items_done", type_=BigInteger),
        items_failed=bindparam("b_items_failed", type_=BigInteger),
        output=bindparam("b_output", type_=chunks.c.output.type),
        error=None,
        finished_at=bindparam("b_finished_at", type_=DateTime),
    )
)

# A job's counts by chunk status: an index-only scan of ix_batch_chunks_job_status, run when
# a job changes state and when a running job is read, never per chunk.
CHUNK_COUNTS = (
    select(
        chunks.c.status,
        func.count(),
        # PostgreSQL sums bigints as numeric (Decimal in Python, which JSON refuses).
        cast(func.coalesce(func.sum(chunks.c.items_done), 0), BigInteger),
        cast(func.coalesce(func.sum(chunks.c.items_failed), 0), BigInteger),
    )
    .where(chunks.c.job_id == bindparam("b_job_id"))
    .group_by(chunks.c.status)
)

TOUCH_JOB = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job_id"))
    .values(updated_at=bindparam("b_now", type_=DateTime))
)

# Whether the job has a chunk left to run: one index probe, whatever the job's size. Asked by a
# chunk after its commit, so the last chunks to commit see each other's commits.
ANY_PENDING = (
    select(chunks.c.idx)
    .where(chunks.c.job_id == bindparam("b_job_id"), chunks.c.status == PENDING)
    .limit(1)
)

# Under the job's lock: marks the job as just moved if it has a chunk left to run; touching no
# row means the job is ready to finish.
TOUCH_JOB_IF_PENDING = TOUCH_JOB.where(
    exists().where(chunks.c.job_id == bindparam("b_job_id"), chunks.c.status == PENDING)
)

COUNT_DELIVERY = (
    update(chunks)
    .where(
        chunks.c.job_id == bindparam("b_job_id"),
        chunks.c.idx == bindparam("b_idx"),
        chunks.c.status == PENDING,
    )
    .values(deliveries=bindparam("b_deliveries", type_=Integer), redelivered=True)
)
