"""The dead-letter queue: task messages the worker refused (see :mod:`batchapp.broker.guard`),
kept as received plus the reason, for an operator to read (``batchapp dead-letters``) and purge
(``batchapp dead-letters --purge``). No worker consumes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from batchapp.broker.publishing import bounded
from batchapp.broker.queues import DEAD
from batchapp.broker.routing import DEAD_LETTER_MAX_LENGTH, dead_letter_queue

__all__ = ["DEAD_LETTER_MAX_LENGTH", "DEAD_LETTER_QUEUE", "dead_letter_queue", "peek", "purge"]

DEAD_LETTER_QUEUE = DEAD
REASON_HEADER = "x-batchapp-rejected"
QUEUE_HEADER = "x-batchapp-queue"


@dataclass(frozen=True)
class DeadLetter:
    task: str
    id: str
    queue: str
    reason: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def publish(
    app: Any, message: Any, headers: dict[str, Any], reason: str, queue: str | None, timeout: float
) -> None:
    """Put ``message`` (body and headers as received) on the dead-letter queue, with ``reason``."""
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    extra = {REASON_HEADER: reason, QUEUE_HEADER: queue}
    with app.producer_or_acquire() as producer:
        try:
            _publish(producer, message, body, {**headers, **extra}, timeout)
        except (TypeError, ValueError):
            # Headers that do not encode again: keep the body and the reason.
            _publish(producer, message, body, extra, timeout)


def _publish(
    producer: Any, message: Any, body: bytes, headers: dict[str, Any], timeout: float
) -> None:
    producer.publish(
        body,
        exchange="",
        routing_key=DEAD_LETTER_QUEUE,
        declare=[dead_letter_queue],
        content_type=str(message.content_type or "application/octet-stream"),
        content_encoding=str(message.content_encoding or "binary"),
        headers=headers,
        delivery_mode=2,
        retry=True,
        retry_policy={"max_retries": 2},
        timeout=timeout,
        confirm_timeout=timeout,
    )


def peek(app: Any, limit: int, timeout: float) -> tuple[int, list[DeadLetter]]:
    """How many messages the dead-letter queue holds, and the oldest ``limit`` of them (they
    stay queued)."""
    with app.connection_for_write() as connection, bounded(connection, timeout):
        channel = connection.channel()
        queue = dead_letter_queue(channel)
        _, count, _ = queue.queue_declare()
        letters: list[DeadLetter] = []
        while len(letters) < limit and (message := queue.get(no_ack=False)) is not None:
            letters.append(_letter(message))
        # Closing the channel returns every message it got, unacknowledged, to the queue.
        channel.close()
        return int(count), letters


def purge(app: Any, timeout: float) -> int:
    """Delete every message in the dead-letter queue; returns how many there were."""
    with app.connection_for_write() as connection, bounded(connection, timeout):
        channel = connection.channel()
        queue = dead_letter_queue(channel)
        queue.declare()
        purged = int(queue.purge() or 0)
        channel.close()
        return purged


def _letter(message: Any) -> DeadLetter:
    headers = message.headers if isinstance(message.headers, dict) else {}
    return DeadLetter(
        task=str(headers.get("task", ""))[:200],
        id=str(headers.get("id", ""))[:255],
        queue=str(headers.get(QUEUE_HEADER, "")),
        reason=str(headers.get(REASON_HEADER, "")),
        size=len(message.body or b""),
    )
