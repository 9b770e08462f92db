"""Dramatiq on RabbitMQ with results in Redis: ``dramatiq peer_apps.dramatiq_peer``."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from batchapp.sums import sum_range, sum_to
from peer_apps import RESULT_TIMEOUT_S, ranges, setting

TIMEOUT_MS = RESULT_TIMEOUT_S * 1000

broker = RabbitmqBroker(url=setting("BROKER_URL"))
broker.add_middleware(Results(backend=RedisBackend(url=setting("REDIS_URL"))))
dramatiq.set_broker(broker)
QUEUE = setting("QUEUE")


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def calculate_sum(n: int) -> int:
    return sum_to(n)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def chunk_sum(first: int, last: int) -> int:
    return sum_range(first, last)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def reduce_sum(parts: list[int]) -> int:
    return sum(parts)


def call(n: int) -> int:
    return int(calculate_sum.send(n).get_result(block=True, timeout=TIMEOUT_MS))


def call_many(ns: list[int]) -> list[int]:
    pending = [calculate_sum.send(n) for n in ns]
    return [int(message.get_result(block=True, timeout=TIMEOUT_MS)) for message in pending]


def map_reduce(n: int, chunk_size: int) -> int:
    """A group of chunk messages; its results go to the reduce (Dramatiq has no chord)."""
    chunks = dramatiq.group(chunk_sum.message(first, last) for first, last in ranges(n, chunk_size))
    parts = list(chunks.run().get_results(block=True, timeout=TIMEOUT_MS))
    return int(reduce_sum.send(parts).get_result(block=True, timeout=TIMEOUT_MS))
