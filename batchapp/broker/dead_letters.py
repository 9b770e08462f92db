"""The dead-letter queue: task messages a worker refused (see :mod:`batchapp.broker.guard`) and
messages a quorum queue delivered more often than its delivery limit, as RabbitMQ dead-lettered
them (routing.py): the message as sent plus RabbitMQ's ``x-death`` header (why, from which queue,
how often). An operator reads them (``batchapp dead-letters``) and purges them (``batchapp
dead-letters --purge``). No worker consumes it.

A rejection carries no text, so the guard's precise reason is not in the dead letter: the worker
logs it in one line with the task id (``Rejected message (task ..., id ...) from queue ...``),
which the dead letter shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from batchapp.broker.publishing import bounded
from batchapp.broker.queues import DEAD
from batchapp.broker.routing import DEAD_LETTER_MAX_LENGTH, dead_letter_queue
from batchapp.broker.routing import TaskQueue as _TaskQueue

__all__ = [
    "DEAD_LETTER_MAX_LENGTH",
    "DEAD_LETTER_QUEUE",
    "REASONS",
    "DeadLetter",
    "dead_letter_queue",
    "dead_letter_queue_of",
    "peek",
    "purge",
]

DEAD_LETTER_QUEUE = DEAD
# What x-death's reasons mean here, for an operator.
REASONS = {
    "rejected": "refused by a worker; the worker's log line with this id says why",
    "delivery_limit": "returned to its quorum queue more often than x-delivery-limit",
}


@dataclass(frozen=True)
class DeadLetter:
    task: str
    id: str
    # The queue it was dead-lettered from, RabbitMQ's reason, and how many times that happened.
    queue: str
    reason: str
    count: int
    size: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def dead_letter_queue_of(app: Any) -> Any:
    """``batchapp.dead`` as ``app``'s task queues declare it (its type follows theirs)."""
    for queue in app.amqp.queues.values():
        if isinstance(queue, _TaskQueue):
            return queue.dead_letters()
    return dead_letter_queue(app.conf.task_default_queue_type or "classic")


def peek(app: Any, limit: int, timeout: float) -> tuple[int, list[DeadLetter]]:
    """How many messages the dead-letter queue holds, and the oldest ``limit`` of them (they
    stay queued)."""
    with app.connection_for_write() as connection, bounded(connection, timeout):
        channel = connection.channel()
        queue = dead_letter_queue_of(app)(channel)
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
        queue = dead_letter_queue_of(app)(channel)
        queue.declare()
        purged = int(queue.purge() or 0)
        channel.close()
        return purged


def _letter(message: Any) -> DeadLetter:
    headers = message.headers if isinstance(message.headers, dict) else {}
    death = _last_death(headers.get("x-death"))
    reason = str(death.get("reason", ""))
    count = death.get("count", 0)
    return DeadLetter(
        task=str(headers.get("task", ""))[:200],
        id=str(headers.get("id", ""))[:255],
        queue=str(death.get("queue", ""))[:255],
        reason=reason[:100],
        count=count if isinstance(count, int) and not isinstance(count, bool) else 0,
        size=len(message.body or b""),
    )


def _last_death(deaths: Any) -> dict[str, Any]:
    """The newest ``x-death`` entry (RabbitMQ puts it first), or an empty one: a message someone
    published straight into ``batchapp.dead`` has none."""
    if isinstance(deaths, list | tuple) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return {}
