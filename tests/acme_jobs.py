"""Job types defined outside batchapp, as a team's own module would be: loaded by worker and CLI
through ``BATCHAPP_JOBS=tests.acme_jobs``, never registered by importing batchapp."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import Connection

from batchapp import Chunk, ChunkOutcome, Int, Job, JobContext, job, ranges


@job(
    "acme.cubes",
    params={"n": Int(min=0, max=10**6), "size": Int(min=1, max=10**6, default=100)},
    chunks=lambda p: ranges(1, p["n"], p["size"]),
    reduce=sum,
)
def cubes(spec: dict[str, Any], params: dict[str, Any]) -> int:
    """1^3 + ... + n^3 in ranges of `size`"""
    return sum(i**3 for i in range(spec["first"], spec["last"] + 1))


class Squares(Job):
    """The full-control form, written as the README's example: plain int() on the raw value."""

    name = "acme.squares"
    summary = "sum of squares"
    params_help = "n=INT"

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        return {"n": int(raw["n"])}

    def plan(self, params: dict[str, Any], ctx: JobContext) -> Iterator[dict[str, Any]]:
        n = params["n"]
        for first in range(1, n + 1, 1000):
            yield {"first": first, "last": min(first + 999, n)}

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        s = chunk.spec
        return ChunkOutcome(
            items_done=s["last"] - s["first"] + 1,
            output=sum(i * i for i in range(s["first"], s["last"] + 1)),
        )

    def reduce(self, params: dict[str, Any], outputs: list[Any]) -> Any:
        return sum(outputs)
