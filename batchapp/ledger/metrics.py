"""The whole ledger in figures, for monitoring: jobs, chunks and items per job name.

One statement per read, whatever the number of jobs: finished jobs are counted from their rows
(their counts were fixed when they finished), running jobs from their chunk rows (as
:mod:`counts` derives them), through the covering index on ``(job_id, status, items...)``.
The two parts are one ``UNION ALL``, so both see the same snapshot on PostgreSQL too: a job that
finishes meanwhile is counted once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    String,
    cast,
    func,
    literal,
    null,
    select,
)

from batchapp.jobs import JobContext
from batchapp.ledger.states import (
    CANCELLED,
    CHUNK_MOVES,
    DONE,
    FAILED,
    JOB_MOVES,
    RUNNING,
    SUCCEEDED,
)
from batchapp.storage.engines import read_transaction
from batchapp.storage.tables import chunks, ensure_schema, jobs

JOB_STATUSES = tuple(JOB_MOVES)
CHUNK_STATUSES = tuple(CHUNK_MOVES)


def _total(column: ColumnElement[Any]) -> ColumnElement[int]:
    # PostgreSQL sums bigints as numeric: cast back, as statements.CHUNK_COUNTS does.
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


# One row per (job name, job status) from the job rows (chunk_status NULL), then one per
# (job name, chunk status) of the running jobs from their chunk rows.
SUMMARY = (
    select(
        jobs.c.name,
        jobs.c.status,
        cast(null(), String).label("chunk_status"),
        cast(func.count(), Integer).label("jobs"),
        _total(jobs.c.chunks_total).label("chunks"),
        _total(jobs.c.chunks_done).label("chunks_done"),
        _total(jobs.c.chunks_failed).label("chunks_failed"),
        _total(jobs.c.items_done).label("items_done"),
        _total(jobs.c.items_failed).label("items_failed"),
        func.max(jobs.c.finished_at).label("last_finished"),
    )
    .group_by(jobs.c.name, jobs.c.status)
    .union_all(
        select(
            jobs.c.name,
            literal(RUNNING, String),
            chunks.c.status,
            literal(0, Integer),
            cast(func.count(), BigInteger),
            literal(0, BigInteger),
            literal(0, BigInteger),
            _total(chunks.c.items_done),
            _total(chunks.c.items_failed),
            cast(null(), DateTime),
        )
        .join(chunks, chunks.c.job_id == jobs.c.id)
        .where(jobs.c.status == RUNNING)
        .group_by(jobs.c.name, chunks.c.status)
    )
)


@dataclass
class LedgerFigures:
    """Per job name: jobs by status, chunks by status, items done and rejected; for running jobs
    their chunks by status; and when each name last succeeded (naive UTC)."""

    jobs: dict[str, dict[str, int]] = field(default_factory=dict)
    chunks: dict[str, dict[str, int]] = field(default_factory=dict)
    items: dict[str, dict[str, int]] = field(default_factory=dict)
    running_chunks: dict[str, dict[str, int]] = field(default_factory=dict)
    last_success: dict[str, datetime] = field(default_factory=dict)


def figures(ctx: JobContext) -> LedgerFigures:
    """Read the ledger's figures in one statement."""
    ensure_schema(ctx.engine)
    with read_transaction(ctx.engine) as connection:
        rows = list(connection.execute(SUMMARY))
    found = LedgerFigures()
    names = sorted({row.name for row in rows})
    for name in names:
        found.jobs[name] = dict.fromkeys(JOB_STATUSES, 0)
        found.chunks[name] = dict.fromkeys(CHUNK_STATUSES, 0)
        found.items[name] = {"done": 0, "rejected": 0}
    running: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CHUNK_STATUSES, 0))
    for row in rows:
        name, chunk_counts, items = row.name, found.chunks[row.name], found.items[row.name]
        if row.chunk_status is not None:  # a running job's chunks
            running[name][row.chunk_status] = running[name].get(row.chunk_status, 0) + row.chunks
            chunk_counts[row.chunk_status] = chunk_counts.get(row.chunk_status, 0) + row.chunks
        else:
            found.jobs[name][row.status] = found.jobs[name].get(row.status, 0) + row.jobs
            if row.status == SUCCEEDED and row.last_finished is not None:
                found.last_success[name] = row.last_finished
            if row.status == RUNNING:
                continue  # counted from their chunk rows
            chunk_counts[DONE] += row.chunks_done
            chunk_counts[FAILED] += row.chunks_failed
            # A finished job's chunks that were neither done nor failed will not run: a cancel
            # (or a skip) stopped them.
            chunk_counts[CANCELLED] += row.chunks - row.chunks_done - row.chunks_failed
        items["done"] += row.items_done
        items["rejected"] += row.items_failed
    found.running_chunks = dict(running)
    return found
