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
"""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

from batchapp.broker.queues import ALL, CALLS, CHUNKS, PERIODIC

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


def queue_arguments(queue_type: str, max_deliveries: int) -> dict[str, Any]:
    """The ``x-`` arguments every batchapp queue is declared with."""
    arguments: dict[str, Any] = {"x-queue-type": queue_type}
    if queue_type == "quorum":
        # Returns allowed before RabbitMQ drops a message: one more delivery than the ledger's
        # cap, so the ledger always sees (and records) the delivery that fails a poison chunk,
        # and the broker drops only what the ledger could not stop.
        arguments["x-delivery-limit"] = max_deliveries
    return arguments


def task_queues(queue_type: str, max_deliveries: int) -> tuple[Queue, ...]:
    """One durable queue per kind of work, each bound to EXCHANGE under its own name."""
    arguments = queue_arguments(queue_type, max_deliveries)
    return tuple(
        Queue(name, EXCHANGE, routing_key=name, durable=True, queue_arguments=arguments)
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
