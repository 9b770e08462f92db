"""The job ledger: submitting jobs, running their chunks exactly once in effect, and retrying.

A job's life is in two tables. Submitting writes the job and one row per chunk, then publishes
one message per chunk. A chunk's worker writes the chunk's output, marks the chunk done and
counts it on the job in one transaction; whoever counts the last chunk also runs the job's
reduce in that transaction. So there is no chord to poll, a chunk delivered twice is written
once, and a job can never be left finished but unreduced.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Integer,
    Row,
    bindparam,
    insert,
    select,
    update,
)

from batchapp.db import dialect_insert, read_transaction, write_transaction
from batchapp.jobs import Job, JobContext, get_job
from batchapp.jobs.base import JSON, MAX_CHUNKS, Chunk, ParamError, utcnow
from batchapp.tables import chunks, ensure_schema, jobs, locks

Publish = Callable[[str, Sequence[int]], None]
"""Sends one message per chunk index of a job (the Celery side supplies it)."""

RUNNING, SUCCEEDED, FAILED, SKIPPED = "running", "succeeded", "failed", "skipped"
PENDING, DONE = "pending", "done"
FINISHED = frozenset({SUCCEEDED, FAILED, SKIPPED})
ERROR_KEEP = 2000


# The statements every chunk runs, built once: building them per call cost more than SQLite.
_FIND_CHUNK = (
    select(jobs.c.name, jobs.c.params, chunks.c.spec, chunks.c.status)
    .join(chunks, chunks.c.job_id == jobs.c.id)
    .where(jobs.c.id == bindparam("b_job_id"), chunks.c.idx == bindparam("b_idx"))
)
# FOR UPDATE holds the row on PostgreSQL; on SQLite the write transaction already does.
_CHUNK_STATUS = (
    select(chunks.c.status)
    .where(chunks.c.job_id == bindparam("b_job_id"), chunks.c.idx == bindparam("b_idx"))
    .with_for_update()
)
_CHUNK_DONE = (
    update(chunks)
    .where(chunks.c.job_id == bindparam("b_job_id"), chunks.c.idx == bindparam("b_idx"))
    .values(
        status=DONE,
        attempts=chunks.c.attempts + 1,
        redelivered=chunks.c.redelivered | bindparam("b_redelivered_now", type_=Boolean),
        items_done=bindparam("b_items_done"),
        items_failed=bindparam("b_items_failed"),
        output=bindparam("b_output", type_=chunks.c.output.type),
        error=None,
        finished_at=bindparam("b_finished_at", type_=DateTime),
    )
)
_COUNT_ON_JOB = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job_id"))
    .values(
        chunks_done=jobs.c.chunks_done + bindparam("b_done", type_=Integer),
        chunks_failed=jobs.c.chunks_failed + bindparam("b_failed", type_=Integer),
        items_done=jobs.c.items_done + bindparam("b_items_done", type_=BigInteger),
        items_failed=jobs.c.items_failed + bindparam("b_items_failed", type_=BigInteger),
        updated_at=bindparam("b_now", type_=DateTime),
    )
    .returning(jobs.c.chunks_done, jobs.c.chunks_failed, jobs.c.chunks_total)
)


class UnknownJobError(LookupError):
    """No job with that id is in the ledger."""


class JobStateError(RuntimeError):
    """The job is not in a state that allows what was asked."""


@dataclass(frozen=True)
class JobView:
    """One job as the ledger has it."""

    id: str
    name: str
    params: dict[str, JSON]
    status: str
    chunks_total: int
    chunks_done: int
    chunks_failed: int
    items_done: int
    items_failed: int
    result: JSON
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_row(cls, row: Row[Any]) -> JobView:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


def submit(
    ctx: JobContext,
    job_name: str,
    raw_params: Mapping[str, Any],
    publish: Publish,
    *,
    exclusive: bool = False,
) -> JobView:
    """Plan a job, record it, and publish its chunks.

    ``exclusive`` runs are for periodic jobs: while an earlier run of the same job is going,
    the new one is recorded as skipped instead of started.
    """
    job = get_job(job_name)
    params = job.parse_params(raw_params, ctx)
    specs = list(job.plan(params, ctx))
    if len(specs) > MAX_CHUNKS:
        raise ParamError(f"{job_name}: {len(specs):,} chunks is over the limit of {MAX_CHUNKS:,}")
    ensure_schema(ctx.engine)
    job_id = uuid.uuid4().hex
    now = utcnow()
    row = {
        "id": job_id,
        "name": job_name,
        "params": params,
        "status": RUNNING,
        "chunks_total": len(specs),
        "chunks_done": 0,
        "chunks_failed": 0,
        "items_done": 0,
        "items_failed": 0,
        "created_at": now,
        "updated_at": now,
    }
    with write_transaction(ctx.engine) as connection:
        if exclusive:
            holder = _take_lock(connection, ctx, job_name, job_id, now)
            if holder is not None:
                row |= {"status": SKIPPED, "finished_at": now, "chunks_total": 0}
                row["error"] = f"skipped: the previous run {holder} is still going"
                connection.execute(insert(jobs).values(row))
                return _view(connection, job_id)
        connection.execute(insert(jobs).values(row))
        if specs:
            connection.execute(
                insert(chunks),
                [
                    {"job_id": job_id, "idx": index, "spec": spec, "status": PENDING}
                    for index, spec in enumerate(specs)
                ],
            )
        else:
            _finish(connection, job, job_id, params, failed=0)
    if specs:
        _publish_or_fail(ctx, job_id, range(len(specs)), publish)
    return get(ctx, job_id)


def run_chunk(ctx: JobContext, job_id: str, index: int, *, redelivered: bool = False) -> str:
    """Run chunk ``index`` of a job once in effect; returns what happened, for the log.

    An error propagates; the task records it with :func:`record_chunk_failure` once it will
    not be retried.
    """
    ensure_schema(ctx.engine)
    key = {"b_job_id": job_id, "b_idx": index}
    with read_transaction(ctx.engine) as connection:
        found = connection.execute(_FIND_CHUNK, key).first()
    if found is None:
        return f"job {job_id} chunk {index} is not in the ledger (removed by cleanup?); dropped"
    if found.status == DONE:
        return f"job {job_id} chunk {index} was already done; duplicate delivery dropped"
    job = get_job(found.name)
    prepared = job.prepare(found.params, found.spec, ctx)
    with write_transaction(ctx.engine) as connection:
        status = _chunk_status(connection, job_id, index)
        if status == DONE:
            return f"job {job_id} chunk {index} was done meanwhile; duplicate dropped"
        outcome = job.commit(connection, Chunk(job_id, found.params, found.spec, prepared), ctx)
        connection.execute(
            _CHUNK_DONE,
            key
            | {
                "b_redelivered_now": redelivered,
                "b_items_done": outcome.items_done,
                "b_items_failed": outcome.items_failed,
                "b_output": outcome.output,
                "b_finished_at": utcnow(),
            },
        )
        _count(
            connection,
            job,
            job_id,
            found.params,
            done=1,
            failed=-1 if status == FAILED else 0,
            items_done=outcome.items_done,
            items_failed=outcome.items_failed,
        )
    return (
        f"job {job_id} chunk {index} done: "
        f"{outcome.items_done} items, {outcome.items_failed} failed"
    )


def record_chunk_failure(
    ctx: JobContext, job_id: str, index: int, exc: BaseException, *, redelivered: bool = False
) -> None:
    """Mark a chunk failed with the reason; the job fails when all its chunks have finished."""
    reason = "".join(traceback.format_exception_only(exc)).strip()[:ERROR_KEEP]
    with write_transaction(ctx.engine) as connection:
        status = _chunk_status(connection, job_id, index)
        if status is None or status == DONE:
            return
        connection.execute(
            update(chunks)
            .where(chunks.c.job_id == job_id, chunks.c.idx == index)
            .values(
                status=FAILED,
                attempts=chunks.c.attempts + 1,
                redelivered=chunks.c.redelivered | redelivered,
                error=reason,
                finished_at=utcnow(),
            )
        )
        if status != FAILED:
            name, params = connection.execute(
                select(jobs.c.name, jobs.c.params).where(jobs.c.id == job_id)
            ).one()
            _count(connection, get_job(name), job_id, params, done=0, failed=1)


def retry(ctx: JobContext, job_id: str, publish: Publish) -> list[int]:
    """Publish again the chunks of a job that are not done; returns their indexes."""
    ensure_schema(ctx.engine)
    with write_transaction(ctx.engine) as connection:
        view = _view(connection, job_id)
        if view.status in (SUCCEEDED, SKIPPED):
            raise JobStateError(f"job {job_id} {view.status}; there is nothing to retry")
        indexes = list(
            connection.execute(
                select(chunks.c.idx)
                .where(chunks.c.job_id == job_id, chunks.c.status != DONE)
                .order_by(chunks.c.idx)
            ).scalars()
        )
        connection.execute(
            update(chunks)
            .where(chunks.c.job_id == job_id, chunks.c.status == FAILED)
            .values(status=PENDING)
        )
        connection.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status=RUNNING, chunks_failed=0, error=None, finished_at=None, updated_at=utcnow()
            )
        )
    if indexes:
        _publish_or_fail(ctx, job_id, indexes, publish)
    return indexes


def get(ctx: JobContext, job_id: str) -> JobView:
    """The job's current state; :class:`UnknownJobError` if there is no such job."""
    ensure_schema(ctx.engine)
    with read_transaction(ctx.engine) as connection:
        return _view(connection, job_id)


def recent(ctx: JobContext, limit: int = 20) -> list[JobView]:
    """The newest jobs first."""
    ensure_schema(ctx.engine)
    with read_transaction(ctx.engine) as connection:
        rows = connection.execute(
            select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)
        )
        return [JobView.from_row(row) for row in rows]


def chunk_rows(ctx: JobContext, job_id: str) -> list[Row[Any]]:
    """The job's chunks in order, without their outputs."""
    with read_transaction(ctx.engine) as connection:
        return list(
            connection.execute(
                select(
                    chunks.c.idx,
                    chunks.c.status,
                    chunks.c.attempts,
                    chunks.c.redelivered,
                    chunks.c.items_done,
                    chunks.c.items_failed,
                    chunks.c.error,
                )
                .where(chunks.c.job_id == job_id)
                .order_by(chunks.c.idx)
            )
        )


def wait(
    ctx: JobContext,
    job_id: str,
    *,
    timeout: float | None = None,
    on_progress: Callable[[JobView], None] | None = None,
) -> JobView:
    """Poll until the job has finished (from 1 ms, backing off by 20% to 0.2 s)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    nap = 0.001
    while True:
        view = get(ctx, job_id)
        if on_progress is not None:
            on_progress(view)
        if view.finished:
            return view
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} still {view.status} after {timeout:g} s")
        time.sleep(nap)
        nap = min(nap * 1.2, 0.2)


def lock_ttl(ctx: JobContext) -> timedelta:
    """How long a periodic run's lock outlives a worker that died holding it."""
    return timedelta(seconds=2 * ctx.settings.task_time_limit)


def _take_lock(
    connection: Connection, ctx: JobContext, name: str, job_id: str, now: datetime
) -> str | None:
    """Take the job's lock; returns the id of the run holding it instead, if any."""
    connection.execute(locks.delete().where(locks.c.name == name, locks.c.expires_at < now))
    taken = connection.execute(
        dialect_insert(connection.dialect.name, locks)
        .values(name=name, job_id=job_id, expires_at=now + lock_ttl(ctx))
        .on_conflict_do_nothing()
        .returning(locks.c.job_id)
    ).first()
    if taken is not None:
        return None
    holder: str = connection.execute(
        select(locks.c.job_id).where(locks.c.name == name)
    ).scalar_one()
    return holder


def _publish_or_fail(
    ctx: JobContext, job_id: str, indexes: Iterable[int], publish: Publish
) -> None:
    try:
        publish(job_id, list(indexes))
    except Exception as exc:
        with write_transaction(ctx.engine) as connection:
            connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    status=FAILED,
                    finished_at=utcnow(),
                    updated_at=utcnow(),
                    error=f"could not publish its chunks: {exc}; run: batchapp retry {job_id}",
                )
            )
        raise


def _chunk_status(connection: Connection, job_id: str, index: int) -> str | None:
    return connection.execute(
        _CHUNK_STATUS, {"b_job_id": job_id, "b_idx": index}
    ).scalar_one_or_none()


def _count(
    connection: Connection,
    job: Job,
    job_id: str,
    params: dict[str, JSON],
    *,
    done: int,
    failed: int,
    items_done: int = 0,
    items_failed: int = 0,
) -> None:
    """Count finished chunks on the job; the call that counts the last one finishes it."""
    totals = connection.execute(
        _COUNT_ON_JOB,
        {
            "b_job_id": job_id,
            "b_done": done,
            "b_failed": failed,
            "b_items_done": items_done,
            "b_items_failed": items_failed,
            "b_now": utcnow(),
        },
    ).one()
    if totals.chunks_done + totals.chunks_failed == totals.chunks_total:
        _finish(connection, job, job_id, params, failed=totals.chunks_failed)


def _finish(
    connection: Connection, job: Job, job_id: str, params: dict[str, JSON], *, failed: int
) -> None:
    now = utcnow()
    values: dict[str, Any] = {"finished_at": now, "updated_at": now}
    if failed:
        first = connection.execute(
            select(chunks.c.idx, chunks.c.error)
            .where(chunks.c.job_id == job_id, chunks.c.status == FAILED)
            .order_by(chunks.c.idx)
            .limit(1)
        ).one()
        values |= {
            "status": FAILED,
            "error": f"{failed} chunk(s) failed; chunk {first.idx}: {first.error}"[:ERROR_KEEP],
        }
    else:
        outputs = connection.execute(
            select(chunks.c.output).where(chunks.c.job_id == job_id).order_by(chunks.c.idx)
        ).scalars()
        values |= {"status": SUCCEEDED, "result": job.reduce(params, list(outputs))}
    connection.execute(update(jobs).where(jobs.c.id == job_id).values(values))
    connection.execute(locks.delete().where(locks.c.job_id == job_id))


def _view(connection: Connection, job_id: str) -> JobView:
    row = connection.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise UnknownJobError(f"no job with id {job_id!r}")
    return JobView.from_row(row)
