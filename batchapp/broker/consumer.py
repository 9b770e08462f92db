"""The worker's consumer (``worker_consumer``): Celery's own, with two changes.

Every task message is checked by :mod:`batchapp.broker.guard` before Celery sees it: a malformed
one is logged in one line and moved to the dead-letter queue, and the worker serves on.

It fails over between the nodes of a cluster. With quorum queues Celery adds a
``DelayedDelivery`` step that runs each time the consumer (re)connects, before any message is
consumed, and declares the delayed delivery queues through every URL of a ``;``-separated
failover list, retrying each URL that does not answer for 1 + 3 + 5 s: when a cluster node
stopped, the worker had already failed over but consumed nothing for 17 s. Cluster members share
exchanges, queues and bindings, so batchapp's step declares them once, through the connection the
consumer has; after a failover the step runs again there. And a recoverable channel error while
(re)connecting is retried, an irrecoverable one is not: right after a failover the node the
worker left may still hold its exclusive control queue for a moment (RESOURCE_LOCKED, which ended
the worker), while a queue declared with other arguments (PRECONDITION_FAILED) still stops the
worker with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from amqp.exceptions import RecoverableChannelError
from celery.exceptions import NotRegistered
from celery.utils.log import get_logger
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery

from batchapp.broker import dead_letters, guard
from batchapp.settings import mask_url

DEAD_LETTER_TIMEOUT_S = 10.0
CELERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"
logger = get_logger(__name__)


class DelayedDeliveryOnLiveBroker(DelayedDelivery):  # type: ignore[misc]
    """Celery's delayed delivery set-up, through the broker the consumer is connected to."""

    def start(self, c: Any) -> None:
        self._validate_configuration(c.app)
        url = c.connection.as_uri(include_password=True)
        # A connection error propagates: the consumer reconnects (failing over) and runs this
        # step again there. Anything else is logged, as Celery's own step does.
        try:
            self._setup_delayed_delivery(c, url)
        except c.connection_errors:
            raise
        except Exception as exc:
            logger.critical("Failed to set up delayed delivery on %s: %s", mask_url(url), exc)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer: messages checked first, delayed delivery on the live broker only,
    and only recoverable channel errors retried (with ``broker_channel_error_retry``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Celery retries these (and connection errors) when a (re)connect fails.
        self.channel_errors = (RecoverableChannelError,)

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        default_steps: ClassVar[list[str]] = [
            "batchapp.broker.consumer:DelayedDeliveryOnLiveBroker" if step == CELERY_STEP else step
            for step in CeleryConsumer.Blueprint.default_steps
        ]

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], None]:
        handle = super().create_task_handler(*args, **kwargs)
        served = frozenset(name for name in self.app.tasks if name.startswith("batchapp."))
        connection_errors = tuple(self.connection_errors)

        def on_task_received(message: Any) -> None:
            try:
                reason = guard.problem(
                    message.headers,
                    message.content_type,
                    message.content_encoding,
                    message.body,
                    served,
                )
            except Exception as exc:  # a gap in the guard must not stop the worker either
                reason = f"the check failed on it: {type(exc).__name__}: {exc}"
            if reason is None:
                try:
                    handle(message)
                    return
                except connection_errors:
                    raise
                except Exception as exc:
                    # What the guard let through must still never stop the worker.
                    if message.acknowledged:
                        logger.exception("Error handling task message after it was acknowledged")
                        return
                    reason = f"the worker could not accept it: {type(exc).__name__}: {exc}"
            self.dead_letter(message, reason)
            _fail_unknown_task(self.app, message.headers, served)

        return on_task_received

    def dead_letter(self, message: Any, reason: str) -> None:
        """Log ``reason`` in one line, move ``message`` to the dead-letter queue, ack it."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        queue = (message.delivery_info or {}).get("routing_key")
        logger.warning(
            "Rejected message (task %.100r, id %.100r) from queue %r into %s: %s",
            headers.get("task"),
            headers.get("id"),
            queue,
            dead_letters.DEAD_LETTER_QUEUE,
            reason[:300],
        )
        try:
            dead_letters.publish(
                self.app, message, headers, reason, queue, timeout=DEAD_LETTER_TIMEOUT_S
            )
        except Exception as exc:
            # Never requeue: the same message would come straight back. Dropped, and said so.
            logger.error("Dropped the rejected message: cannot dead-letter it (%s)", exc)
        message.ack_log_error(logger, self.connection_errors)


def _fail_unknown_task(app: Any, headers: Any, served: frozenset[str]) -> None:
    """A caller waiting on a task nobody serves gets NotRegistered at once, as with Celery."""
    task, task_id = (
        (headers.get("task"), headers.get("id")) if isinstance(headers, dict) else (0, 0)
    )
    if not isinstance(task, str) or task in served:
        return
    if not isinstance(task_id, str) or not 0 < len(task_id) <= guard.MAX_ID_CHARS:
        return
    try:
        app.backend.mark_as_failure(task_id, NotRegistered(task[:200]))
    except Exception as exc:
        logger.error("Cannot record NotRegistered for task %.100r: %s", task_id, exc)
