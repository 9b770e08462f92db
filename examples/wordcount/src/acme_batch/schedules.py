"""acme.stock_value: the stock's total value, on a schedule declared in code.

Beat runs it daily at 06:00 in BATCHAPP_TIMEZONE. ``ACME_STOCK_VALUE_EVERY=SECONDS`` runs it
every N seconds instead (to watch it, or in a test). Runs never overlap: a tick that comes
while the last run goes on is recorded as skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from batchapp import Chunk, ChunkOutcome, Job, JobContext, cron, every
from sqlalchemy import inspect, text

from acme_batch.imports import TABLE

if TYPE_CHECKING:
    from sqlalchemy import Connection

EVERY = os.environ.get("ACME_STOCK_VALUE_EVERY")


class StockValue(Job):
    name = "acme.stock_value"
    summary = "units and value of the active stock in acme_stock"
    params_help = "(none)"
    schedule = every(float(EVERY)) if EVERY else cron("0 6 * * *")

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        if raw:
            raise ValueError(f"takes no parameters, got {', '.join(sorted(raw))}")
        return {}

    def plan(self, params: dict[str, Any], ctx: JobContext) -> Iterator[dict[str, Any]]:
        yield {}

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        if not inspect(connection).has_table(TABLE):  # nothing imported yet
            return ChunkOutcome(items_done=0, output={"skus": 0, "units": 0, "value_cents": 0})
        skus, units, value = connection.execute(
            text(
                f"SELECT count(*), coalesce(sum(units), 0), coalesce(sum(value_cents), 0) "
                f"FROM {TABLE} WHERE active IS NULL OR active"
            )
        ).one()
        return ChunkOutcome(
            items_done=skus, output={"skus": skus, "units": units, "value_cents": value}
        )

    def reduce(self, params: dict[str, Any], outputs: list[Any]) -> Any:
        return outputs[0]
