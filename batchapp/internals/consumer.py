"""The worker's consumer (``worker_consumer``): Celery's own, changed through Celery's private
hooks, which live here and nowhere else. Each is checked when a worker builds its consumer: one
that would not take (Celery renamed or moved it) stops the worker with one line naming the hook
and the Celery version, instead of the worker running without it.

- Every task message goes through :func:`batchapp.broker.consumer.on_task_message` first (the
  guard; a bad message is rejected into ``batchapp.dead``), by overriding
  ``Consumer.create_task_handler``, the method Celery's event loop asks for its message callback.
- While bad messages flood the calls queue (:class:`batchapp.broker.consumer.Surge`), the
  calls queue's consumer is cancelled and consumed again with a wider prefetch, and again with
  Celery's once they stop (:class:`CallsPrefetch`): RabbitMQ gives a prefetch to a consumer
  when it starts consuming (per-consumer ``basic.qos``, what Celery applies to quorum queues),
  and Celery has one for every queue. With a channel-wide prefetch (classic queues) it stays.
- It fails over between the nodes of a cluster. With quorum queues Celery adds a
  ``DelayedDelivery`` step that runs each time the consumer (re)connects, before any message is
  consumed, and declares the delayed delivery queues through every URL of a ``;``-separated
  failover list, retrying each URL that does not answer for 1 + 3 + 5 s: when a cluster node
  stopped, the worker had already failed over but consumed nothing for 17 s. Cluster members
  share exchanges, queues and bindings, so batchapp's step (swapped in for Celery's in
  ``Consumer.Blueprint.default_steps``) declares them once, through the connection the consumer
  has; after a failover the step runs again there.
- A recoverable channel error while (re)connecting is retried, an irrecoverable one is not
  (``Consumer.channel_errors``): right after a failover the node the worker left may still hold
  its exclusive control queue for a moment (RESOURCE_LOCKED, which ended the worker), while a
  queue declared with other arguments (PRECONDITION_FAILED) still stops the worker with the
  reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

import celery
from amqp.exceptions import RecoverableChannelError
from celery.utils.log import get_logger
from celery.worker import loops
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from celery.worker.consumer.tasks import Tasks

from batchapp.broker import consumer
from batchapp.settings import mask_url

CELERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"
BATCHAPP_STEP = "batchapp.internals.consumer:DelayedDeliveryOnLiveBroker"
# Private methods of Celery's DelayedDelivery step that batchapp's step calls.
DELAYED_DELIVERY_METHODS = ("_validate_configuration", "_setup_delayed_delivery")
logger = get_logger(__name__)


class HookNotTaken(RuntimeError):
    """A private Celery hook batchapp relies on is not where batchapp expects it."""

    def __init__(self, hook: str, what: str) -> None:
        super().__init__(
            f"batchapp: the worker cannot start: its hook {hook} did not take on Celery "
            f"{celery.__version__} ({what}); batchapp supports Celery 5.7"
        )


class DelayedDeliveryOnLiveBroker(DelayedDelivery):  # type: ignore[misc]
    """Celery's delayed delivery set-up, through the broker the consumer is connected to."""

    def start(self, c: Any) -> None:
        # Private: Celery's own check of broker_url and the delay queue type, as its step does.
        self._validate_configuration(c.app)
        url = c.connection.as_uri(include_password=True)
        # A connection error propagates: the consumer reconnects (failing over) and runs this
        # step again there. Anything else is logged, as Celery's own step does.
        try:
            # Private: Celery's declare-and-bind of the delay topology, for one URL only.
            self._setup_delayed_delivery(c, url)
        except c.connection_errors:
            raise
        except Exception as exc:
            logger.critical("Failed to set up delayed delivery on %s: %s", mask_url(url), exc)


class CallsPrefetch:
    """Widens the calls queue consumer's prefetch while a :class:`Surge` of bad messages
    lasts, and narrows it back to Celery's when it ends."""

    def __init__(self, c: Any) -> None:
        self.c = c
        self.surge = consumer.Surge()
        self.switching = False
        # Private: the consumer's event loop (None for the synchronous loop, where this stays
        # off); stands in for a public way to run a callback on the worker's loop.
        hub = getattr(c, "hub", None)
        if hub is not None:
            hub.call_repeatedly(consumer.SURGE_CALM_S / 2, self.check)

    def on_reject(self) -> None:
        if self.surge.bad(time.monotonic()) and getattr(self.c, "hub", None) is not None:
            self.c.hub.call_soon(self._consume_calls, consumer.SURGE_PREFETCH)

    def check(self) -> None:
        if self.surge.calm(time.monotonic()):
            self._consume_calls(None)

    def reset(self) -> None:
        """A new connection: its consumers start with Celery's prefetch."""
        self.surge = consumer.Surge()

    def _consume_calls(self, prefetch: int | None) -> None:
        c = self.c
        task_consumer = c.task_consumer
        # Private: Celery's QoS object and whether it is channel-wide (set by its Tasks step).
        if self.switching or task_consumer is None or getattr(c, "qos_global", True):
            return
        queue = next((q for q in task_consumer.queues if q.name == consumer.SURGE_QUEUE), None)
        if queue is None or not task_consumer.consuming_from(consumer.SURGE_QUEUE):
            return  # this worker does not consume the calls queue
        normal = c.qos.value
        self.switching = True
        try:
            # Messages delivered while cancelling still reach the handler; none is lost.
            task_consumer.channel.basic_qos(0, prefetch or normal, False)
            task_consumer.cancel_by_queue(consumer.SURGE_QUEUE)
            task_consumer.add_queue(queue)
            task_consumer.consume()
            task_consumer.channel.basic_qos(0, normal, False)
            logger.info("Consuming %s with prefetch %d", consumer.SURGE_QUEUE, prefetch or normal)
        except c.connection_errors:
            raise
        except Exception as exc:
            if not task_consumer.consuming_from(consumer.SURGE_QUEUE):
                raise  # never a worker that silently stopped consuming its calls
            logger.error("Cannot change the prefetch of %s: %s", consumer.SURGE_QUEUE, exc)
        finally:
            self.switching = False


def swap_step(steps: Sequence[str]) -> list[str]:
    """``steps`` with Celery's delayed delivery step replaced by batchapp's; raises
    :class:`HookNotTaken` if Celery's is not among them."""
    if CELERY_STEP not in steps:
        raise HookNotTaken(
            "DelayedDeliveryOnLiveBroker",
            f"no step {CELERY_STEP!r} in celery.worker.consumer.Consumer.Blueprint.default_steps",
        )
    return [BATCHAPP_STEP if step == CELERY_STEP else step for step in steps]


def check_hooks(consumer_class: type, delayed_delivery_class: type) -> None:
    """Raise :class:`HookNotTaken` for the first hook batchapp's consumer would lose."""
    if not callable(getattr(consumer_class, "create_task_handler", None)):
        raise HookNotTaken(
            "create_task_handler", "celery.worker.consumer.Consumer has no create_task_handler"
        )
    for loop in (loops.asynloop, loops.synloop):
        if "create_task_handler" not in loop.__code__.co_names:
            raise HookNotTaken(
                "create_task_handler",
                f"celery.worker.loops.{loop.__name__} no longer calls create_task_handler",
            )
    if "qos_global" not in Tasks.start.__code__.co_names:
        raise HookNotTaken(
            "CallsPrefetch", "celery.worker.consumer.tasks.Tasks.start no longer sets qos_global"
        )
    for method in DELAYED_DELIVERY_METHODS:
        if not callable(getattr(delayed_delivery_class, method, None)):
            raise HookNotTaken(
                "DelayedDeliveryOnLiveBroker",
                f"celery.worker.consumer.delayed_delivery.DelayedDelivery has no {method}",
            )
    swap_step(consumer_class.Blueprint.default_steps)  # type: ignore[attr-defined]


def _steps_or_celerys(steps: Sequence[str]) -> list[str]:
    """The swapped steps; Celery's unchanged if the swap cannot be made (the worker's consumer
    then refuses to start, in :class:`Consumer`, with the reason)."""
    try:
        return swap_step(steps)
    except HookNotTaken:
        return list(steps)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer: messages checked first, delayed delivery on the live broker only,
    and only recoverable channel errors retried (with ``broker_channel_error_retry``)."""

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        # Private: the step list of Celery's consumer, by path; stands in for a public way to
        # replace a built-in consumer step (Celery has one to add steps, none to replace one).
        default_steps: ClassVar[list[str]] = _steps_or_celerys(
            CeleryConsumer.Blueprint.default_steps
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            check_hooks(CeleryConsumer, DelayedDelivery)
            if BATCHAPP_STEP not in self.Blueprint.default_steps:
                swap_step(())  # Celery's list lacked the step when this module was imported
        except HookNotTaken as exc:
            # One line and exit status 1, whatever Celery does with other errors at start.
            raise SystemExit(str(exc)) from None
        super().__init__(*args, **kwargs)
        if not hasattr(self, "channel_errors"):
            raise SystemExit(
                str(HookNotTaken("channel_errors", "Consumer.__init__ no longer sets it"))
            )
        # Private: the channel errors Celery retries (with connection errors) when a
        # (re)connect fails; stands in for a setting that would narrow broker_channel_error_retry.
        self.channel_errors = (RecoverableChannelError,)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], None]:
        # Private: Celery's builder of the callback its event loop gives every task message;
        # stands in for a public pre-dispatch hook (task_received fires after the decode).
        handle = super().create_task_handler(*args, **kwargs)
        if getattr(self, "_calls_prefetch", None) is None:
            self._calls_prefetch = CallsPrefetch(self)
            self._recorder = consumer.Recorder(self.app)
        self._calls_prefetch.reset()
        return partial(
            consumer.on_task_message,
            handle,
            consumer.served_tasks(self.app.tasks),
            self.app,
            # Private: the connection errors Celery's consumer recovers from by reconnecting.
            tuple(self.connection_errors),
            on_reject=self._calls_prefetch.on_reject,
            recorder=self._recorder,
        )
