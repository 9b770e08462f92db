"""Which queue each task travels on, and how those queues are declared on RabbitMQ.

A worker started without ``-Q`` consumes every queue here. A call or a tick waits at most for
one running chunk, never for a backlog, because three things hold together:

- each queue has its own consumer on the worker's channel, and with per-consumer prefetch
  (``basic.qos`` with ``global=False``, what Celery applies to quorum queues) each consumer may
  hold ``concurrency x prefetch multiplier`` unacked messages of its own. Chunks can fill the
  chunk consumer's share, never the calls' or the ticks'. (With channel-wide prefetch, Celery's
  choice for classic queues, a slot freed by a finished chunk goes to whichever waiting queue
  RabbitMQ picks at random, so a call or tick may wait for several chunks and a tick may
  expire; see ``QUEUE_TYPE_DEFAULT`` in settings.py.)
- the prefork pool's ``fair`` strategy (Celery's default ``-O``) gives a message to an idle
  process only, in arrival order, so a call received while both processes run chunks goes to
  the first process that frees up, ahead of any chunk delivered after it.
- ``task_acks_late`` keeps the chunk consumer's share equal to the chunks actually running.

Every task queue dead-letters into ``batchapp.dead`` (:func:`dead_letter_queue`) through the
default exchange: what a worker rejects (``basic.reject``, ``requeue=False``) and, on quorum
queues, a message returned more often than ``x-delivery-limit``. The default exchange exists on
every vhost and routes by queue name with no binding to declare or lose, so the only thing that
must exist is the queue itself: each task queue declares it first (:class:`TaskQueue`), wherever
a task queue is declared (the worker on every (re)connect, a caller before its first publish).
Quorum queues dead-letter at least once: RabbitMQ keeps a dead-lettered message in the source
queue until ``batchapp.dead`` confirms it (retrying while that queue is missing or its node is
down), where at most once would drop it silently.
"""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

from batchapp.broker.queues import ALL, CALLS, CHUNKS, DEAD, PERIODIC

QUEUE_TYPES = ("quorum", "classic")

# Topic, not direct: Celery's native delayed delivery (how ETA/countdown works on quorum
# queues) skips queues bound to a direct exchange, and such a task would then wait in a worker.
EXCHANGE = Exchange("batchapp", type="topic", durable=True)

# By task name; anything not listed (an unknown or future task) goes to CALLS, which every
# default worker consumes, so nothing lands on a queue nobody reads.
TASK_ROUTES: dict[str, dict[str, str]] = {
    "batchapp.tasks.calculate_sum": {"queue": CALLS},
    "batchapp.tasks.run_chunk": {"queue": CHUNKS},
    "batchapp.tasks.run_periodic": {"queue": PERIODIC},
    # Beat's own entry, added by Celery itself.
    "celery.backend_cleanup": {"queue": PERIODIC},
}


# A flood of bad messages must not fill the broker's disk: past this, the oldest go first.
DEAD_LETTER_MAX_LENGTH = 100_000


def dead_letter_queue(queue_type: str) -> Queue:
    """``batchapp.dead``, of the task queues' type: with quorum queues it is a quorum queue too,
    replicated like them, so losing one cluster node loses neither dead letters nor the
    declaration every task queue makes of it first (a classic queue whose node is down cannot
    be declared: NOT_FOUND, and the worker could not fail over)."""
    arguments: dict[str, Any] = {"x-max-length": DEAD_LETTER_MAX_LENGTH}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return Queue(DEAD, routing_key=DEAD, durable=True, queue_arguments=arguments)


class TaskQueue(Queue):
    """A task queue whose every declaration declares its dead-letter queue first, so no message
    can be dead-lettered before ``batchapp.dead`` exists (the default exchange drops a message
    routed to a missing queue)."""

    def dead_letters(self) -> Queue:
        """This queue's dead-letter queue (of this queue's type)."""
        arguments = getattr(self, "queue_arguments", None) or {}
        return dead_letter_queue(str(arguments.get("x-queue-type", "classic")))

    def declare(self, nowait: bool = False, channel: Any = None) -> str:
        if not getattr(self, "no_declare", False):
            self.dead_letters().queue_declare(nowait=nowait, channel=channel or self.channel)
        return str(super().declare(nowait=nowait, channel=channel))  # type: ignore[no-untyped-call]


def queue_arguments(queue_type: str, max_deliveries: int) -> dict[str, Any]:
    """The ``x-`` arguments every batchapp queue is declared with."""
    arguments: dict[str, Any] = {
        "x-queue-type": queue_type,
        # Rejected (and, on quorum queues, over-delivered) messages go to batchapp.dead.
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": DEAD,
    }
    if queue_type == "quorum":
        # Returns allowed before RabbitMQ dead-letters a message: one more delivery than the
        # ledger's cap, so the ledger always sees (and records) the delivery that fails a poison
        # chunk, and the broker dead-letters only what the ledger could not stop.
        arguments["x-delivery-limit"] = max_deliveries
        # Kept in the source queue until batchapp.dead confirms it, not dropped on the way.
        # RabbitMQ requires reject-publish for that; with no x-max-length it refuses nothing.
        arguments["x-dead-letter-strategy"] = "at-least-once"
        arguments["x-overflow"] = "reject-publish"
    return arguments


def task_queues(queue_type: str, max_deliveries: int) -> tuple[Queue, ...]:
    """One durable queue per kind of work, each bound to EXCHANGE under its own name."""
    arguments = queue_arguments(queue_type, max_deliveries)
    return tuple(
        TaskQueue(  # type: ignore[no-untyped-call]
            name, EXCHANGE, routing_key=name, durable=True, queue_arguments=arguments
        )
        for name in ALL
    )


def ticks_on_periodic(schedule: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every beat entry on the PERIODIC queue (an entry may still name another queue)."""
    return {
        name: {**entry, "options": {"queue": PERIODIC, **entry.get("options", {})}}
        for name, entry in schedule.items()
    }


def celery_routing(queue_type: str, max_deliveries: int) -> dict[str, Any]:
    """The Celery 5 routing settings: queues, routes, and the default for everything else."""
    return {
        "task_queues": task_queues(queue_type, max_deliveries),
        "task_routes": TASK_ROUTES,
        "task_default_queue": CALLS,
        "task_default_exchange": EXCHANGE.name,
        "task_default_exchange_type": EXCHANGE.type,
        "task_default_routing_key": CALLS,
        "task_default_queue_type": queue_type,
        # A route or `queue=` naming a queue not declared above raises QueueNotFound at the
        # caller, instead of Celery creating a queue that no worker consumes.
        "task_create_missing_queues": False,
        # Per-consumer prefetch and native delayed delivery when the queues are quorum queues.
        "worker_detect_quorum_queues": True,
    }
