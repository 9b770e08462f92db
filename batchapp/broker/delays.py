"""Countdowns and ETAs on quorum queues, where a delayed task waits on RabbitMQ, not in a worker.

Celery routes such a task through the 28 delay exchanges and queues of its native delayed
delivery, which workers declare when they start, with a delay of whole seconds. Two gaps are
closed here: a caller that sends before any worker has started would publish to a missing
exchange (or to one no task queue is bound to yet, where the message would vanish), and kombu
refuses a delay under one second.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery.utils.time import maybe_iso8601

from batchapp.internals.delays import declare_delay_topology, uses_quorum_queues

_ready: set[str] = set()


def delay_options(app: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``apply_async`` options that native delayed delivery can carry out as asked."""
    countdown, eta = options.get("countdown"), options.get("eta")
    if not countdown and not eta:
        return options
    with app.connection_for_write() as connection:
        if not uses_quorum_queues(app, connection):
            return options
        _ensure_delay_topology(app, connection)
    seconds = _seconds_until(app, countdown, eta)
    if seconds is not None and 0 < seconds < 1:
        # The shortest delay RabbitMQ's delay queues hold is one second.
        return {**{k: v for k, v in options.items() if k != "eta"}, "countdown": 1}
    return options


def _seconds_until(app: Any, countdown: float | None, eta: datetime | str | None) -> float | None:
    if eta is None:
        return countdown
    when = maybe_iso8601(eta)
    if when.tzinfo is None:
        return None  # Celery reads a naive ETA in its own way; leave it to Celery.
    return float((when - app.now()).total_seconds())


def _ensure_delay_topology(app: Any, connection: Any) -> None:
    """Declare the delay exchanges and bind every task queue to them, once per broker."""
    key = connection.as_uri()
    if key in _ready:
        return
    declare_delay_topology(app, connection)
    _ready.add(key)
