"""Huey on SQLite (``PEERS_HUEY=sqlite``) or Redis: ``huey_consumer peer_apps.huey_peer.huey``."""

from __future__ import annotations

from huey import RedisHuey, SqliteHuey

from batchapp.sums import sum_range, sum_to
from peer_apps import RESULT_TIMEOUT_S, ranges, setting

huey = (
    SqliteHuey(setting("QUEUE"), filename=setting("SQLITE"))
    if setting("HUEY") == "sqlite"
    # notify_result: a waiting caller is woken by BLPOP instead of polling for its result.
    else RedisHuey(setting("QUEUE"), url=setting("REDIS_URL"), notify_result=True)
)


@huey.task()
def calculate_sum(n: int) -> int:
    return sum_to(n)


@huey.task()
def chunk_sum(first: int, last: int) -> int:
    return sum_range(first, last)


@huey.task()
def reduce_sum(parts: list[int]) -> int:
    return sum(parts)


def call(n: int) -> int:
    return int(calculate_sum(n).get(blocking=True, timeout=RESULT_TIMEOUT_S))


def call_many(ns: list[int]) -> list[int]:
    pending = [calculate_sum(n) for n in ns]
    return [int(result.get(blocking=True, timeout=RESULT_TIMEOUT_S)) for result in pending]


def map_reduce(n: int, chunk_size: int) -> int:
    """``Task.map`` over the ranges, then the reduce with their results."""
    parts = chunk_sum.map(ranges(n, chunk_size)).get(blocking=True, timeout=RESULT_TIMEOUT_S)
    return int(reduce_sum(parts).get(blocking=True, timeout=RESULT_TIMEOUT_S))
