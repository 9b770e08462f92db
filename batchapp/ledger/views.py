"""Reading the ledger: one job, the recent jobs, a job's chunks, and waiting for a job."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Row, func, select, union_all
from sqlalchemy.exc import DBAPIError, OperationalError

from batchapp.jobs import JobContext
from batchapp.jobs.base import JSON
from batchapp.ledger import counts
from batchapp.ledger.states import (
    CANCELLED,
    FAILED,
    FINISHED,
    RUNNING,
    JobStalledError,
    UnknownJobError,
)
from batchapp.storage.engines import read_transaction, watch_changes
from batchapp.storage.tables import chunks, ensure_schema, import_rejects, jobs, sales_rejects
from batchapp.storage.tables import executions as executions_table

FIRST_POLL_S = 0.0005
MAX_POLL_S = 0.2
# While a job moves, a wait sleeps this many times as long as its last read took.
READ_SHARE = 4
STALL_AFTER_S = 10.0
"""A job without progress this long is checked for chunks in flight (twice, to be sure)."""
READ_RETRY_S = 10.0
"""How long a wait keeps reading again after its read lost the database connection."""
# A job may have 10,000 failed chunks: `status` lists the first ones and counts the rest.
FAILED_CHUNKS_LISTED = 20


def iso_time(value: datetime | None, tz: ZoneInfo) -> str | None:
    """A stored (naive UTC) time in ``tz``, ISO 8601, for JSON."""
    return None if value is None else value.replace(tzinfo=UTC).astimezone(tz).isoformat()


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
    # What the submitter named the job with (``submit --key``), per job name.
    key: str | None = None
    # True only in what a keyed submit returns when the key's job already existed.
    existing: bool = False

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def chunks_cancelled(self) -> int:
        """Chunks a cancel stopped before they ran."""
        if self.status != CANCELLED:
            return 0
        return self.chunks_total - self.chunks_done - self.chunks_failed

    def as_json(self, tz: ZoneInfo) -> dict[str, Any]:
        """The job as ``batchapp jobs --json`` and the web API show it."""
        finished_at = self.finished_at
        elapsed = (finished_at - self.created_at).total_seconds() if finished_at else None
        return {
            "id": self.id,
            "job": self.name,
            "key": self.key,
            "params": self.params,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "chunks": {
                "total": self.chunks_total,
                "done": self.chunks_done,
                "failed": self.chunks_failed,
                "cancelled": self.chunks_cancelled,
            },
            "items": {"done": self.items_done, "failed": self.items_failed},
            "created_at": iso_time(self.created_at, tz),
            "finished_at": iso_time(finished_at, tz),
            "elapsed_s": elapsed,
        }

    @classmethod
    def from_row(cls, connection: Connection, row: Row[Any]) -> JobView:
        """The job's row; a running job's counts are derived from its chunks as they are now."""
        names = [name for name in cls.__dataclass_fields__ if name not in ("key", "existing")]
        fields = {name: getattr(row, name) for name in names}
        fields["key"] = row.job_key
        if row.status == RUNNING:
            fields |= counts.derive(connection, row.id).job_values()
        return cls(**fields)


@dataclass(frozen=True)
class ExecutionView:
    """One run of a job: its submit, or a retry that set it running again."""

    number: int
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    # The job's status when the run ended; "running" while it goes.
    outcome: str
    # Chunks that finished during this run.
    chunks_done: int
    chunks_failed: int
    error: str | None

    def as_json(self, tz: ZoneInfo) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_by": self.started_by,
            "outcome": self.outcome,
            "chunks": {"done": self.chunks_done, "failed": self.chunks_failed},
            "error": self.error,
            "started_at": iso_time(self.started_at, tz),
            "finished_at": iso_time(self.finished_at, tz),
        }


def failed_chunks_json(failed: list[Any]) -> dict[str, Any]:
    """The first :data:`FAILED_CHUNKS_LISTED` failed chunks, and how many more there are."""
    return {
        "failed_chunks": [
            {"index": c.idx, "attempts": c.attempts, "error": c.error}
            for c in failed[:FAILED_CHUNKS_LISTED]
        ],
        "failed_chunks_not_listed": max(len(failed) - FAILED_CHUNKS_LISTED, 0),
    }


def executions(ctx: JobContext, job_id: str) -> list[ExecutionView]:
    """The job's runs, first first; :class:`UnknownJobError` if there is no such job. The run
    still going counts its chunks as they are now."""
    ensure_schema(ctx.engine)
    with read_transaction(ctx.engine) as connection:
        view(connection, job_id)
        rows = connection.execute(
            select(executions_table)
            .where(executions_table.c.job_id == job_id)
            .order_by(executions_table.c.number)
        ).all()
        runs = []
        done_before = 0
        for row in rows:
            if row.finished_at is None:
                now = counts.derive(connection, job_id)
                done, failed, outcome = now.done - done_before, now.failed, RUNNING
            else:
                done, failed, outcome = row.chunks_done or 0, row.chunks_failed or 0, row.outcome
            done_before += done
            runs.append(
                ExecutionView(
                    row.number,
                    row.started_by,
                    row.started_at,
                    row.finished_at,
                    outcome,
                    done,
                    failed,
                    row.error,
                )
            )
        return runs


def view(connection: Connection, job_id: str) -> JobView:
    """The job as this transaction sees it; :class:`UnknownJobError` if there is none."""
    row = connection.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise UnknownJobError(f"no job with id {job_id!r}")
    return JobView.from_row(connection, row)


def get(ctx: JobContext, job_id: str) -> JobView:
    """The job's current state; :class:`UnknownJobError` if there is no such job."""
    ensure_schema(ctx.engine)
    with read_transaction(ctx.engine) as connection:
        return view(connection, job_id)


def recent(
    ctx: JobContext,
    limit: int = 20,
    *,
    offset: int = 0,
    status: str | None = None,
    name: str | None = None,
) -> list[JobView]:
    """The newest jobs first, from ``offset`` on; only those with ``status`` and job ``name``
    when given."""
    ensure_schema(ctx.engine)
    query = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id)
    if status is not None:
        query = query.where(jobs.c.status == status)
    if name is not None:
        query = query.where(jobs.c.name == name)
    with read_transaction(ctx.engine) as connection:
        rows = connection.execute(query.limit(limit).offset(offset))
        return [JobView.from_row(connection, row) for row in rows]


def chunk_errors(ctx: JobContext, job_id: str) -> list[tuple[str, int]]:
    """The job's failed chunks grouped by error text: (error, chunks), most chunks first."""
    ensure_schema(ctx.engine)
    with read_transaction(ctx.engine) as connection:
        view(connection, job_id)
        count = func.count().label("chunks")
        rows = connection.execute(
            select(chunks.c.error, count)
            .where(chunks.c.job_id == job_id, chunks.c.status == FAILED)
            .group_by(chunks.c.error)
            .order_by(count.desc(), chunks.c.error)
        )
        return [(row.error or "", row.chunks) for row in rows]


def rejects(ctx: JobContext, job_id: str, limit: int, offset: int = 0) -> list[Row[Any]]:
    """A CSV import's rejected lines (line, reason, raw, first_line), by line; none for a job
    that imports nothing."""
    ensure_schema(ctx.engine)
    both = union_all(
        *(
            select(t.c.line, t.c.reason, t.c.raw, t.c.first_line).where(t.c.job_id == job_id)
            for t in (sales_rejects, import_rejects)
        )
    ).subquery()
    with read_transaction(ctx.engine) as connection:
        return list(
            connection.execute(select(both).order_by(both.c.line).limit(limit).offset(offset))
        )


def chunk_rows(ctx: JobContext, job_id: str) -> list[Row[Any]]:
    """The job's chunks in order, without their outputs."""
    ensure_schema(ctx.engine)
    with read_transaction(ctx.engine) as connection:
        return list(
            connection.execute(
                select(
                    chunks.c.idx,
                    chunks.c.status,
                    chunks.c.attempts,
                    chunks.c.redelivered,
                    chunks.c.deliveries,
                    chunks.c.items_done,
                    chunks.c.items_failed,
                    chunks.c.error,
                )
                .where(chunks.c.job_id == job_id)
                .order_by(chunks.c.idx)
            )
        )


def _read_again_if_cut_off(read: Callable[[], JobView]) -> JobView:
    """``read()``, tried again for up to :data:`READ_RETRY_S` while it fails because the
    database dropped or refused the connection (a restart, a failover, an administrator's
    ``pg_terminate_backend``, a reset): the pool's pre-ping covers only idle connections, and
    the job goes on whether or not its waiter could read it just then."""
    give_up = time.monotonic() + READ_RETRY_S
    nap = 0.05
    while True:
        try:
            return read()
        except DBAPIError as exc:
            cut_off = exc.connection_invalidated or isinstance(exc, OperationalError)
            if not cut_off or time.monotonic() + nap > give_up:
                raise
        time.sleep(nap)
        nap = min(nap * 2, 1.0)


def wait(
    ctx: JobContext,
    job_id: str,
    *,
    timeout: float | None = None,
    on_progress: Callable[[JobView], None] | None = None,
    in_flight: Callable[[JobView], bool] | None = None,
    stall_after: float = STALL_AFTER_S,
) -> JobView:
    """Poll until the job has finished, from 0.5 ms, backing off by 20% to 0.2 s. On SQLite a
    poll reads the job only after a commit, and a read that finds the job moved brings the
    next poll back to 0.5 ms (or four times the read, for a big job).

    ``in_flight`` (asked after ``stall_after`` seconds without progress) says whether any chunk
    of the job may still be queued or running; twice no in a row is :class:`JobStalledError`.
    A read cut off from the database is tried again (:func:`_read_again_if_cut_off`).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    progress: tuple[int, int] | None = None
    check_at = time.monotonic() + stall_after
    idle_checks = 0
    nap = FIRST_POLL_S
    current: JobView | None = None
    with watch_changes(ctx.engine) as changed:
        while True:
            moved = False
            # A first check always says yes; it runs then too, so later ones compare with it.
            if changed is None or changed() or current is None:
                started = time.perf_counter()
                current = _read_again_if_cut_off(lambda: get(ctx, job_id))
                took = time.perf_counter() - started
                moved = (current.chunks_done, current.chunks_failed) != progress
            if on_progress is not None:
                on_progress(current)
            if current.finished:
                return current
            now = time.monotonic()
            if moved:
                progress = (current.chunks_done, current.chunks_failed)
                check_at, idle_checks = now + stall_after, 0
            elif in_flight is not None and now >= check_at:
                idle_checks = 0 if in_flight(current) else idle_checks + 1
                check_at = now + stall_after / 2
                if idle_checks == 2:
                    raise JobStalledError(
                        f"job {job_id} made no progress for {stall_after:g} s and none of its "
                        "chunks is queued or running: are the workers using another ledger "
                        "(BATCHAPP_DATABASE_URL) or another broker? `batchapp retry "
                        f"{job_id}` publishes its chunks again"
                    )
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"job {job_id} still {current.status} after {timeout:g} s")
            if moved and changed is not None:
                # The job is moving and a commit is noticed for 9 us: look again soon, but
                # spend at most a fifth of the time reading (a big job's counts cost more).
                nap = max(FIRST_POLL_S, READ_SHARE * took)
            else:
                nap = min(nap * 1.2, MAX_POLL_S)
            time.sleep(nap)
