"""A flood of malformed messages on the calls queue, as anyone who can publish can send it."""

from __future__ import annotations

import time
from collections.abc import Sequence

from kombu import Connection, Producer

from batchapp.broker import queues, routing

BATCH = 100


def publish_not_json(broker_url: str, ids: Sequence[str], seconds: float) -> float:
    """One message per id on ``batchapp.calls``: a JSON content type, the body ``not json``, a
    real task's name; paced so that message n leaves no earlier than its share of ``seconds``.
    Returns the seconds the publishing took."""
    with Connection(broker_url) as connection:
        producer = Producer(connection.channel())
        started = time.monotonic()
        for number, task_id in enumerate(ids, 1):
            producer.publish(
                b"not json",
                exchange=routing.EXCHANGE,
                routing_key=queues.CALLS,
                content_type="application/json",
                content_encoding="utf-8",
                headers={"task": "batchapp.tasks.calculate_sum", "id": task_id, "lang": "py"},
            )
            if number % BATCH == 0:
                time.sleep(max(0.0, started + seconds * number / len(ids) - time.monotonic()))
        return time.monotonic() - started
