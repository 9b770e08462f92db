"""A job's life as a whole: submit, retry, cancel, and the reconciler that finishes lost jobs."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Exists, exists, insert, select
from sqlalchemy.exc import IntegrityError

from batchapp.jobs import JobContext, get_job
from batchapp.jobs.base import MAX_CHUNKS, ParamError, utcnow
from batchapp.ledger import locks
from batchapp.ledger.states import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    JobStateError,
    UnknownJobError,
    check_job_move,
)
from batchapp.ledger.transitions import (
    LockedJob,
    end_execution,
    lock_job,
    move_chunks,
    move_job,
    settle,
    start_execution,
)
from batchapp.ledger.views import JobView, get, view
from batchapp.storage.engines import dialect_insert, read_transaction, write_transaction
from batchapp.storage.tables import (
    KEY_MAX_CHARS,
    LIVE_KEY_STATUSES,
    LIVE_KEY_WHERE,
    chunks,
    ensure_schema,
    jobs,
)
from batchapp.validate import shown

_KEY_ATTEMPTS = 5

Publish = Callable[[str, Sequence[int]], None]
"""Sends one message per chunk index of a job (the Celery side supplies it)."""


def submit(
    ctx: JobContext,
    job_name: str,
    raw_params: Mapping[str, Any],
    publish: Publish,
    *,
    exclusive: bool = False,
    key: str | None = None,
) -> JobView:
    """Plan a job, record it, and publish its chunks.

    ``exclusive`` runs are for periodic jobs: while an earlier run of the same job is going,
    the new one is recorded as skipped instead of started.

    With a ``key``, while a job of this name with that key is running or has succeeded, that
    job is returned (its view's ``existing`` is true) and nothing is planned or published; a
    job with that key that failed or was cancelled does not hold it, so a new job starts. The
    database's unique index decides between submits at the same moment: one job is created.
    """
    job = get_job(job_name)
    if key is not None:
        check_key(key)
    params = job.parse_params(raw_params, ctx)
    ensure_schema(ctx.engine)
    if key is not None:
        # Seen before planning, so a submit that finds the job costs no plan (a scan of a CSV).
        with read_transaction(ctx.engine) as connection:
            holder = _key_holder(connection, job_name, key)
            if holder is not None:
                return replace(view(connection, holder), existing=True)
    specs = list(job.plan(params, ctx))
    if len(specs) > MAX_CHUNKS:
        raise ParamError(f"{job_name}: {len(specs):,} chunks is over the limit of {MAX_CHUNKS:,}")
    job_id = uuid.uuid4().hex
    now = utcnow()
    row: dict[str, Any] = {
        "id": job_id,
        "name": job_name,
        "params": params,
        "status": RUNNING,
        "chunks_total": len(specs),
        "chunks_done": 0,
        "chunks_failed": 0,
        "items_done": 0,
        "items_failed": 0,
        "exclusive": exclusive,
        "created_at": now,
        "updated_at": now,
        "job_key": key,
    }
    with write_transaction(ctx.engine) as connection:
        if exclusive:
            holder = locks.take(connection, job_name, job_id, now, locks.lock_ttl(ctx.settings))
            if holder is not None:
                row |= {"status": SKIPPED, "finished_at": now, "chunks_total": 0}
                row["error"] = f"skipped: the previous run {holder} is still going"
                connection.execute(insert(jobs).values(row))
                start_execution(connection, job_id, "submit", now)
                end_execution(connection, job_id, SKIPPED, row["error"], 0, 0, now)
                return view(connection, job_id)
        if key is not None:
            existing = _insert_keyed(connection, row)
            if existing is not None:
                return replace(view(connection, existing), existing=True)
        else:
            connection.execute(insert(jobs).values(row))
        start_execution(connection, job_id, "submit", now)
        if specs:
            connection.execute(
                insert(chunks),
                [
                    {"job_id": job_id, "idx": index, "spec": spec, "status": PENDING}
                    for index, spec in enumerate(specs)
                ],
            )
        else:
            settle(connection, lock_job(connection, job_id))
    if specs:
        _publish_or_fail(ctx, job_id, range(len(specs)), publish)
    return get(ctx, job_id)


def check_key(key: object) -> None:
    """A key is 1 to 200 printable characters, with no space at either end."""
    if not isinstance(key, str):
        raise ParamError(f"key must be a string, got {type(key).__name__}")
    if not key or len(key) > KEY_MAX_CHARS:
        raise ParamError(f"key must be 1 to {KEY_MAX_CHARS} characters, got {len(key)}")
    if not key.isprintable() or key != key.strip():
        raise ParamError(f"key must be printable, with no space at either end, got {shown(key)}")


def _key_holder(connection: Connection, job_name: str, key: str) -> str | None:
    """The running or succeeded job of this name with this key, if any."""
    found: str | None = connection.execute(
        select(jobs.c.id).where(
            jobs.c.name == job_name, jobs.c.job_key == key, jobs.c.status.in_(LIVE_KEY_STATUSES)
        )
    ).scalar()
    return found


def _insert_keyed(connection: Connection, row: dict[str, Any]) -> str | None:
    """Insert the keyed job unless a live job holds its key; returns that job's id if one does.

    The unique index is what decides: on PostgreSQL a second insert of the key waits for the
    first's transaction and then does nothing; on SQLite writers take turns. A holder that
    stopped holding the key between our insert and our look (it failed) lets us try again.
    """
    statement = (
        dialect_insert(connection.dialect.name, jobs)
        .values(row)
        .on_conflict_do_nothing(index_elements=["name", "job_key"], index_where=LIVE_KEY_WHERE)
        .returning(jobs.c.id)
    )
    for _ in range(_KEY_ATTEMPTS):
        if connection.execute(statement).first() is not None:
            return None
        holder = _key_holder(connection, row["name"], row["job_key"])
        if holder is not None:
            return holder
    raise JobStateError(f"key {shown(row['job_key'])} of {row['name']} keeps changing hands")


def retry(ctx: JobContext, job_id: str, publish: Publish) -> list[int]:
    """Publish again the chunks of a job that are not done; returns their indexes."""
    ensure_schema(ctx.engine)
    try:
        with write_transaction(ctx.engine) as connection:
            locked = lock_job(connection, job_id)
            move_chunks(connection, locked, FAILED, PENDING)
            move_chunks(connection, locked, CANCELLED, PENDING)
            if locked.status != RUNNING:
                _check_key_free(connection, job_id)
                # A job that may not run again raises here, which rolls the chunk moves back.
                locked = move_job(
                    connection, locked, RUNNING, "there is nothing to retry", error=None
                )
            indexes = _pending(connection, locked)
            settle(connection, locked)
    except IntegrityError:
        # A submit with the job's key started a job at the same moment (the unique index).
        with read_transaction(ctx.engine) as connection:
            _check_key_free(connection, job_id)
        raise
    if indexes:
        _publish_or_fail(ctx, job_id, indexes, publish)
    return indexes


def _check_key_free(connection: Connection, job_id: str) -> None:
    """A failed or cancelled job whose key a newer job holds may not run again."""
    job = connection.execute(
        select(jobs.c.name, jobs.c.status, jobs.c.job_key).where(jobs.c.id == job_id)
    ).first()
    if job is None or job.job_key is None:
        return
    holder = _key_holder(connection, job.name, job.job_key)
    if holder is not None and holder != job_id:
        raise JobStateError(
            f"job {job_id} is {job.status}; its key {shown(job.job_key)} now belongs to the "
            f"newer job {holder}, so it is not run again"
        )


def cancel(ctx: JobContext, job_id: str) -> JobView:
    """Stop a running job: chunks not yet run never run; done chunks keep their output."""
    ensure_schema(ctx.engine)
    with write_transaction(ctx.engine) as connection:
        locked = lock_job(connection, job_id)
        check_job_move(job_id, locked.status, CANCELLED, "only a running job can be cancelled")
        stopped = move_chunks(connection, locked, PENDING, CANCELLED)
        move_job(
            connection,
            locked,
            CANCELLED,
            "only a running job can be cancelled",
            error=f"cancelled; {len(stopped)} chunk(s) not run (batchapp retry {job_id} runs them)",
        )
        return view(connection, job_id)


def reconcile(
    ctx: JobContext, publish: Publish, *, stale_after: timedelta | None = None
) -> dict[str, str]:
    """Finish or restart running jobs that nothing has moved for ``stale_after``.

    Such a job lost its messages (a failure that could not be recorded, a publish that never
    arrived). One whose chunks all finished is finished; otherwise its pending chunks are
    published again, which is safe: a chunk delivered twice is dropped. Returns what was done,
    by job id. ``stale_after`` defaults to the task time limit, the longest a chunk can run.
    """
    ensure_schema(ctx.engine)
    stale_after = stale_after or timedelta(seconds=ctx.settings.task_time_limit)
    cutoff = utcnow() - stale_after
    with read_transaction(ctx.engine) as connection:
        stale = list(
            connection.execute(
                select(jobs.c.id).where(
                    jobs.c.status == RUNNING, jobs.c.updated_at < cutoff, ~_moved_since(cutoff)
                )
            ).scalars()
        )
    done: dict[str, str] = {}
    for job_id in stale:
        with write_transaction(ctx.engine) as connection:
            try:
                locked = lock_job(connection, job_id)
            except UnknownJobError:
                continue  # removed by cleanup meanwhile
            still_stale = connection.execute(
                select(jobs.c.id).where(
                    jobs.c.id == job_id, jobs.c.updated_at < cutoff, ~_moved_since(cutoff)
                )
            ).first()
            if locked.status != RUNNING or still_stale is None:
                continue  # it moved meanwhile
            # settle also marks the job as just moved, so it is republished once per period.
            settled = settle(connection, locked)
            indexes = _pending(connection, settled) if settled.status == RUNNING else []
        if settled.status != RUNNING:
            done[job_id] = f"finished: {settled.status}"
            continue
        try:
            publish(job_id, indexes)
        except Exception as exc:
            done[job_id] = f"could not republish {len(indexes)} chunk(s): {exc}"
        else:
            done[job_id] = f"republished {len(indexes)} chunk(s)"
    return done


def _moved_since(cutoff: datetime) -> Exists:
    """Whether a chunk of the job finished since ``cutoff``: a chunk's commit does not touch
    its job's row (so a job's chunks commit side by side), so its row's ``updated_at`` alone
    says only when the job last changed state."""
    return exists().where(chunks.c.job_id == jobs.c.id, chunks.c.finished_at >= cutoff)


def _pending(connection: Connection, job: LockedJob) -> list[int]:
    return list(
        connection.execute(
            select(chunks.c.idx)
            .where(chunks.c.job_id == job.id, chunks.c.status == PENDING)
            .order_by(chunks.c.idx)
        ).scalars()
    )


def _publish_or_fail(
    ctx: JobContext, job_id: str, indexes: Sequence[int] | range, publish: Publish
) -> None:
    """Publish; if that fails, the chunks not yet run fail with the reason, so the job fails
    as a whole (a message that got through after all is dropped) and retry can run them."""
    try:
        publish(job_id, list(indexes))
    except Exception as exc:
        now = utcnow()
        reason = f"could not publish its chunks: {exc}; run: batchapp retry {job_id}"
        with write_transaction(ctx.engine) as connection:
            locked = lock_job(connection, job_id)
            if locked.status == RUNNING:
                move_chunks(connection, locked, PENDING, FAILED, error=reason, finished_at=now)
                settle(connection, locked)
        raise
