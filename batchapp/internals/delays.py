"""Celery's native delayed delivery (countdowns on quorum queues), set up from a caller."""

from __future__ import annotations

from typing import Any

from celery.utils.quorum_queues import detect_quorum_queues
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)


def uses_quorum_queues(app: Any, connection: Any) -> bool:
    """Whether the app's queues are quorum queues, as the worker decides it."""
    # Undocumented: the check Celery's worker makes before it turns on native delayed delivery.
    return bool(detect_quorum_queues(app, connection.transport.driver_type)[0])


def declare_delay_topology(app: Any, connection: Any) -> None:
    """Declare the delay exchanges and queues, and bind every task queue to them."""
    # Undocumented: what Celery's DelayedDelivery worker step declares when a worker starts;
    # a caller that sends a countdown before any worker ran needs it too.
    declare_native_delayed_delivery_exchanges_and_queues(
        connection, app.conf.broker_native_delayed_delivery_queue_type
    )
    for queue in app.amqp.queues.values():
        queue.bind(connection.default_channel).declare()
        bind_queue_to_native_delayed_delivery_exchange(connection, queue)
