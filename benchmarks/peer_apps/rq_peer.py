"""RQ: two ``rq worker`` processes of the in-process ``SimpleWorker`` class on one queue."""

from __future__ import annotations

from functools import cache
from typing import Any

from redis import Redis
from rq import Queue, get_current_job
from rq.job import Job

from batchapp.sums import sum_range, sum_to
from peer_apps import RESULT_TIMEOUT_S, ranges, setting


def calculate_sum(n: int) -> int:
    return sum_to(n)


def chunk_sum(first: int, last: int) -> int:
    return sum_range(first, last)


def reduce_sum(job_ids: list[str]) -> int:
    """The sum of the chunk jobs' return values (it runs once they all finished)."""
    current = get_current_job()
    assert current is not None
    return sum(job.return_value() for job in Job.fetch_many(job_ids, current.connection))


@cache
def _queue() -> Queue:
    return Queue(setting("QUEUE"), connection=Redis.from_url(setting("REDIS_URL")))


def _result(job: Job) -> Any:
    result = job.latest_result(timeout=RESULT_TIMEOUT_S)
    if result is None or result.type != result.Type.SUCCESSFUL:
        raise RuntimeError(f"rq job {job.id} ({job.func_name}): {result and result.exc_string}")
    return result.return_value


def call(n: int) -> int:
    return int(_result(_queue().enqueue(calculate_sum, n)))


def call_many(ns: list[int]) -> list[int]:
    queue = _queue()
    pending = [queue.enqueue(calculate_sum, n) for n in ns]
    return [int(_result(job)) for job in pending]


def map_reduce(n: int, chunk_size: int) -> int:
    """Chunk jobs, then a reduce job that depends on them all (RQ's multiple dependencies)."""
    queue = _queue()
    chunks = [queue.enqueue(chunk_sum, first, last) for first, last in ranges(n, chunk_size)]
    total = queue.enqueue(reduce_sum, [job.id for job in chunks], depends_on=chunks)
    return int(_result(total))
