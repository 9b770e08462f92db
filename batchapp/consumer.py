"""The worker's consumer: Celery's own, made to fail over between the nodes of a cluster.

Delayed delivery is set up on the live broker only. With quorum queues Celery adds a
``DelayedDelivery`` step to the consumer, and it runs each time the consumer (re)connects, before
any message is consumed. Celery's step declares the delayed delivery queues through every URL of
a ``;``-separated failover list, retrying each URL that does not answer for 1 + 3 + 5 s: when a
cluster node stopped, the worker had already failed over but consumed nothing for 17 s. Cluster
members share exchanges, queues and bindings, so batchapp's step declares them once, through the
connection the consumer has; after a failover to another broker the step runs again there.

A recoverable channel error while (re)connecting is retried, an irrecoverable one is not. Right
after a failover the node the worker left may still hold the worker's exclusive control queue
for a moment: RESOURCE_LOCKED, which ended the worker ("Unrecoverable error"). A queue declared
with other arguments (PRECONDITION_FAILED) still stops the worker with the reason.
"""

from __future__ import annotations

from typing import Any, ClassVar

from amqp.exceptions import RecoverableChannelError
from celery.utils.log import get_logger
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu.utils.url import maybe_sanitize_url

logger = get_logger(__name__)
CELERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


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
            logger.critical(
                "Failed to set up delayed delivery on %s: %s", maybe_sanitize_url(url), exc
            )


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer with :class:`DelayedDeliveryOnLiveBroker` in place of Celery's step,
    retrying only the recoverable channel errors (with ``broker_channel_error_retry``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Celery retries these (and connection errors) when a (re)connect fails.
        self.channel_errors = (RecoverableChannelError,)

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        default_steps: ClassVar[list[str]] = [
            "batchapp.consumer:DelayedDeliveryOnLiveBroker" if step == CELERY_STEP else step
            for step in CeleryConsumer.Blueprint.default_steps
        ]
