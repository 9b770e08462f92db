"""The short form of a job: a function per chunk, declared parameters, and a reduce.

    @job("acme.squares", params={"n": Int(min=0, max=10**9)},
         chunks=lambda p: ranges(1, p["n"], 1000), reduce=sum)
    def squares(spec, params):
        return sum(i * i for i in range(spec["first"], spec["last"] + 1))

builds a :class:`FunctionJob` (a real :class:`~batchapp.jobs.base.Job`) and registers it.
``schedule=every(60)`` or ``schedule=cron("0 3 * * *")``, with ``schedule_params``, has beat run
it on that schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import Connection

from batchapp.beat.timing import Schedule, check_schedule
from batchapp.broker import queues
from batchapp.jobs.base import (
    JSON,
    MAX_CHUNKS,
    Chunk,
    ChunkOutcome,
    Job,
    JobContext,
    ParamError,
    check_keys,
)
from batchapp.jobs.params import Param
from batchapp.jobs.registry import JOBS

ChunkFunction = Callable[[dict[str, JSON], dict[str, JSON]], Any]
PlanFunction = Callable[[dict[str, JSON]], Iterable[dict[str, JSON]]]
ReduceFunction = Callable[[list[JSON]], JSON]


class FunctionJob(Job):
    """A job made of functions; :func:`job` builds one."""

    def __init__(
        self,
        name: str,
        function: ChunkFunction,
        *,
        params: Mapping[str, Param],
        chunks: PlanFunction | None,
        reduce: ReduceFunction | None,
        summary: str,
        queue: str,
        schedule: Schedule | None = None,
        schedule_params: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"a job name must be a non-empty string without blanks, got {name!r}")
        bad = [key for key, param in params.items() if not isinstance(param, Param)]
        if bad:
            raise TypeError(
                f"{name}: parameter {bad[0]!r} is not an Int, Float, Str, Bool or Choice"
            )
        self.name = name  # type: ignore[misc]
        self.summary = summary  # type: ignore[misc]
        self.params_help = ", ".join(p.help(key) for key, p in params.items())  # type: ignore[misc]
        self.queue = queue  # type: ignore[misc]
        check_schedule(schedule, schedule_params or {}, name)
        self.schedule = schedule  # type: ignore[misc]
        self.schedule_params = dict(schedule_params or {})  # type: ignore[misc]
        self.function = function
        self.declared = dict(params)
        self.chunks = chunks
        self.reducer = reduce

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, JSON]:
        check_keys(self.name, raw, set(self.declared))
        return {key: param.parse(self.name, raw, key) for key, param in self.declared.items()}

    def plan(self, params: dict[str, JSON], ctx: JobContext) -> Iterator[dict[str, JSON]]:
        if self.chunks is None:
            yield {}
            return
        for count, spec in enumerate(self.chunks(params), 1):
            if count > MAX_CHUNKS:
                raise ParamError(f"{self.name}: more than {MAX_CHUNKS:,} chunks")
            if not isinstance(spec, dict):
                raise ParamError(f"{self.name}: chunks must yield dicts, got {type(spec).__name__}")
            yield spec

    def prepare(self, params: dict[str, JSON], spec: dict[str, JSON], ctx: JobContext) -> Any:
        # Outside any transaction: the ledger's write lock is not held while the function runs.
        return self.function(spec, params)

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        if isinstance(chunk.prepared, ChunkOutcome):
            return chunk.prepared
        return ChunkOutcome(items_done=1, output=chunk.prepared)

    def reduce(self, params: dict[str, JSON], outputs: list[JSON]) -> JSON:
        return None if self.reducer is None else self.reducer(outputs)

    def __call__(self, spec: dict[str, JSON], params: dict[str, JSON]) -> Any:
        """The chunk function itself, so the decorated name still runs (in a test, say)."""
        return self.function(spec, params)

    def __repr__(self) -> str:
        return f"<job {self.name} ({self.function.__module__}.{self.function.__qualname__})>"


def job(
    name: str,
    *,
    params: Mapping[str, Param] | None = None,
    chunks: PlanFunction | None = None,
    reduce: ReduceFunction | None = None,
    summary: str | None = None,
    queue: str = queues.CHUNKS,
    schedule: Schedule | None = None,
    schedule_params: Mapping[str, Any] | None = None,
    register: bool = True,
) -> Callable[[ChunkFunction], FunctionJob]:
    """Make the decorated ``function(spec, params)`` a job called ``name`` and register it.

    ``params`` declares each parameter (:class:`Int`, :class:`Float`, :class:`Str`,
    :class:`Bool`, :class:`Choice`); ``chunks(params)`` yields one JSON dict per chunk (default:
    one empty spec); the function's return value is the chunk's output (a
    :class:`ChunkOutcome` to count items itself); ``reduce(outputs)`` makes the job's result.
    ``summary`` defaults to the function's docstring's first line. ``schedule`` (:func:`every`
    or :func:`cron`) has beat run the job with ``schedule_params``.
    """

    def decorate(function: ChunkFunction) -> FunctionJob:
        doc = (function.__doc__ or "").strip().splitlines()
        made = FunctionJob(
            name,
            function,
            params=params or {},
            chunks=chunks,
            reduce=reduce,
            summary=summary if summary is not None else (doc[0] if doc else ""),
            queue=queue,
            schedule=schedule,
            schedule_params=schedule_params,
        )
        if register:
            JOBS.register(made, JOBS.current_origin(function.__module__))
        return made

    return decorate


def ranges(first: int, last: int, size: int) -> Iterator[dict[str, JSON]]:
    """``{"first": a, "last": b}`` for consecutive ranges of ``size`` covering first..last."""
    if size < 1:
        raise ParamError(f"a range size must be at least 1, got {size}")
    for start in range(first, last + 1, size):
        yield {"first": start, "last": min(start + size - 1, last)}
