"""parallel_sum: 1 + 2 + ... + n, split into ranges that workers sum in parallel."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import Connection

from batchapp.jobs.base import (
    JSON,
    MAX_CHUNKS,
    Chunk,
    ChunkOutcome,
    Job,
    JobContext,
    ParamError,
    check_keys,
    int_param,
)
from batchapp.sums import MAX_N, sum_range


class ParallelSum(Job):
    name = "parallel_sum"
    summary = "the sum 1..n as a map-reduce over ranges; equals calculate_sum(n)"
    params_help = "n=INT (0..10**18), chunk_size=INT (default 10000)"

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, JSON]:
        check_keys(self.name, raw, {"n", "chunk_size"})
        n = int_param(self.name, raw, "n", minimum=0, maximum=MAX_N)
        chunk_size = int_param(
            self.name, raw, "chunk_size", default=10_000, minimum=1, maximum=MAX_N
        )
        chunks = -(-n // chunk_size)
        if chunks > MAX_CHUNKS:
            raise ParamError(
                f"{self.name}: n={n:,} with chunk_size={chunk_size:,} makes {chunks:,} chunks; "
                f"the limit is {MAX_CHUNKS:,}, so use chunk_size >= {-(-n // MAX_CHUNKS):,}"
            )
        return {"n": n, "chunk_size": chunk_size}

    def plan(self, params: dict[str, JSON], ctx: JobContext) -> Iterator[dict[str, JSON]]:
        n, size = params["n"], params["chunk_size"]
        for first in range(1, n + 1, size):
            yield {"first": first, "last": min(first + size - 1, n)}

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        first, last = chunk.spec["first"], chunk.spec["last"]
        return ChunkOutcome(items_done=last - first + 1, output=sum_range(first, last))

    def reduce(self, params: dict[str, JSON], outputs: list[JSON]) -> JSON:
        return sum(outputs)
