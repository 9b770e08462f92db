"""Stock Celery: ``celery -A peer_apps.celery_peer worker``, its result backend from the env.

``PEERS_RESULT_BACKEND`` picks the variant (``rpc://``, ``redis://...``, ``db+sqlite:///...``);
``PEERS_MAPREDUCE`` is ``chord``, or ``group`` (a group, then the reduce as a task of its own,
for ``rpc://``, which has no chords); ``PEERS_PREFETCH`` is the prefetch multiplier.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chord, group

from batchapp.sums import sum_range, sum_to
from peer_apps import RESULT_TIMEOUT_S, delay_all_then_get, delay_and_get, ranges, setting

app = Celery("peers_celery", broker=setting("BROKER_URL"), backend=setting("RESULT_BACKEND"))
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    timezone="Asia/Seoul",
    task_default_queue=setting("QUEUE"),
    # Optimizing guide: many short tasks want a large prefetch multiplier (64 or 128).
    worker_prefetch_multiplier=int(setting("PREFETCH")),
    broker_connection_retry_on_startup=True,
)


@app.task(name="peers.calculate_sum")
def calculate_sum(n: int) -> int:
    return sum_to(n)


@app.task(name="peers.chunk_sum")
def chunk_sum(first: int, last: int) -> int:
    return sum_range(first, last)


@app.task(name="peers.reduce_sum")
def reduce_sum(parts: list[int]) -> int:
    return sum(parts)


def call(n: int) -> int:
    return delay_and_get(calculate_sum, n)


def call_many(ns: list[int]) -> list[int]:
    return delay_all_then_get(calculate_sum, ns)


def map_reduce(n: int, chunk_size: int) -> int:
    header = [chunk_sum.s(first, last) for first, last in ranges(n, chunk_size)]
    if setting("MAPREDUCE") == "chord":
        result: Any = chord(header)(reduce_sum.s()).get(timeout=RESULT_TIMEOUT_S)
        return int(result)
    parts = group(header).apply_async().get(timeout=RESULT_TIMEOUT_S)
    return int(reduce_sum.delay(parts).get(timeout=RESULT_TIMEOUT_S))
