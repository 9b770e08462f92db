"""Jobs that beat runs on a schedule: each is one chunk, and never overlaps itself."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, select

from batchapp.broker import queues
from batchapp.jobs.base import JSON, Chunk, ChunkOutcome, Job, JobContext, check_keys, utcnow
from batchapp.jobs.sales_report import fold_sales
from batchapp.storage.tables import (
    chunks,
    executions,
    import_rejects,
    jobs,
    locks,
    sales_daily,
    sales_rejects,
)


class _SingleChunk(Job):
    params_help = "(none)"
    queue = queues.PERIODIC

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, JSON]:
        check_keys(self.name, raw, set())
        return {}

    def plan(self, params: dict[str, JSON], ctx: JobContext) -> Iterator[dict[str, JSON]]:
        yield {}

    def reduce(self, params: dict[str, JSON], outputs: list[JSON]) -> JSON:
        return outputs[0]


class SalesReport(_SingleChunk):
    name = "report"
    summary = "totals per day (in the configured timezone) and store into sales_daily"

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        folded = fold_sales(connection, utcnow())
        # Counted, not taken from rowcount: psycopg reports -1 for INSERT ... SELECT.
        written, days = connection.execute(
            select(func.count(), func.count(func.distinct(sales_daily.c.day)))
        ).one()
        return ChunkOutcome(
            items_done=folded, output={"rows": written, "days": days, "folded": folded}
        )


class Cleanup(_SingleChunk):
    name = "cleanup"
    summary = "remove expired task results and ledger entries past the retention"

    def prepare(self, params: dict[str, JSON], spec: dict[str, JSON], ctx: JobContext) -> Any:
        ctx.expire_results()
        return None

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        now = utcnow()
        cutoff = now - timedelta(days=ctx.settings.ledger_retention_days)
        old = select(jobs.c.id).where(jobs.c.finished_at < cutoff).scalar_subquery()
        connection.execute(delete(chunks).where(chunks.c.job_id.in_(old)))
        connection.execute(delete(executions).where(executions.c.job_id.in_(old)))
        for rejects in (sales_rejects, import_rejects):
            connection.execute(delete(rejects).where(rejects.c.job_id.in_(old)))
        removed = connection.execute(delete(jobs).where(jobs.c.finished_at < cutoff)).rowcount
        connection.execute(delete(locks).where(locks.c.expires_at < now))
        return ChunkOutcome(items_done=removed, output={"jobs_removed": removed})
