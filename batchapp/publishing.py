"""Publish many messages and have RabbitMQ confirm them as one batch.

With ``confirm_publish`` every ``apply_async`` waits for its own confirm, which RabbitMQ sends
once the message is on disk: about 2 ms each. A job's chunks are published together, so they are
confirmed together: all are sent on a channel of their own in confirm mode, then one wait lasts
until the broker has acked the last.

Every wait on the broker here is bounded: a broker that takes the publishes but never answers
(a lost reply, a blocked connection) ends in :class:`BrokerTimeout`, never in a hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from amqp.exceptions import MessageNacked
from celery import Task, uuid
from celery._state import get_current_worker_task
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError

from batchapp import confirms
from batchapp.delays import delay_options

BROKER_TIMEOUT_S = 30.0


class BrokerTimeout(TimeoutError):
    """The broker did not answer in time; the batch's messages may or may not be queued."""


def publish_batch(
    app: Any, publish: Callable[[Any], int], timeout: float = BROKER_TIMEOUT_S
) -> None:
    """Call ``publish(producer)`` (it returns how many messages it sent), then wait until the
    broker has confirmed them all; a nack raises, and so does any wait past ``timeout`` s.

    ``publish`` must pass ``retry=False``: a retry would resend on another channel, outside
    the batch. On a transport without confirms (the embedded folder broker) it just publishes.
    """
    with app.pool.acquire(block=True) as connection:
        if connection.transport.driver_type != "amqp":
            with app.producer_or_acquire() as producer:
                publish(producer)
            return
        acked, sent = [0], 0
        try:
            with bounded(connection, timeout):
                channel = connection.channel()
                acked = _confirm_mode(channel)
                sent = publish(app.amqp.Producer(channel))
                deadline = time.monotonic() + timeout
                while acked[0] < sent:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError()
                    connection.drain_events(timeout=remaining)
                channel.close()
        except BrokerTimeout as exc:
            raise BrokerTimeout(
                f"{exc}: it confirmed {acked[0]} of {sent} messages "
                "(the others may or may not be queued)"
            ) from None


@contextmanager
def bounded(connection: Any, timeout: float) -> Iterator[None]:
    """Every read and write on ``connection``'s socket inside gives up after ``timeout`` s, as
    :class:`BrokerTimeout`: py-amqp waits for some replies (confirm_select, channel close, queue
    declare) with no limit of its own."""
    # A pooled connection that a broker drop closed is reopened here, not used closed; and an
    # unreachable broker is an error after a few tries, not a wait forever.
    connection.ensure_connection(max_retries=3, timeout=timeout)
    if connection.transport.driver_type != "amqp":
        yield  # the embedded folder broker has no socket to wait on
        return
    try:
        with connection.connection.transport.having_timeout(timeout):
            yield
    except TimeoutError:
        # Replies are being lost: a polite close would wait for one more. Drop the socket;
        # a pooled connection is reopened on its next use.
        connection.collect()
        raise BrokerTimeout(f"RabbitMQ did not answer within {timeout:g} s") from None
    except BaseException:
        connection.collect()
        raise


def _confirm_mode(channel: Any) -> list[int]:
    """Put ``channel`` in confirm mode without a wait per publish; returns [highest acked]."""
    channel.confirm_select()
    # py-amqp binds basic_publish to a publish-and-wait when confirm_publish is on.
    channel.basic_publish = channel._basic_publish
    acked = [0]

    def on_ack(delivery_tag: int, multiple: bool) -> None:
        acked[0] = max(acked[0], delivery_tag)

    def on_nack(delivery_tag: int, multiple: bool) -> None:
        raise MessageNacked(f"RabbitMQ refused message {delivery_tag} of a batch")

    channel.events["basic_ack"].add(on_ack)
    channel.events["basic_nack"].add(on_nack)
    return acked


class BatchappTask(Task):  # type: ignore[misc]
    """Every batchapp task: countdowns that quorum queues can carry (see delays.py), confirms
    that a caller's burst of publishes does not wait for one by one (see confirms.py), and a
    publish on a connection the broker closed fails as a connection error, not as kombu's
    ``AttributeError`` for a closed pooled connection (celery/kombu#690)."""

    # How long a caller waits for RabbitMQ's confirms (tasks.py sets BATCHAPP_BROKER_TIMEOUT).
    confirm_timeout = BROKER_TIMEOUT_S

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> Any:
        options = delay_options(self.app, options)
        if not self._confirms_in_window(options):
            return self._publish(args, kwargs, task_id=task_id, **options)
        task_id = task_id or uuid()
        window = confirms.window_for(self.app, self.confirm_timeout)
        return window.publish(
            task_id,
            lambda producer: self._publish(
                args, kwargs, task_id=task_id, producer=producer, retry=False, **options
            ),
            # Sent again as Celery sends it: confirmed one by one, with its retries.
            lambda: self._publish(args, kwargs, task_id=task_id, **options),
        )

    def AsyncResult(self, task_id: str, **kwargs: Any) -> ConfirmedResult:
        return ConfirmedResult(
            task_id, backend=self.backend, task_name=self.name, app=self._get_app(), **kwargs
        )

    def _confirms_in_window(self, options: dict[str, Any]) -> bool:
        """A caller's own publish on RabbitMQ with confirms; not one inside a running task,
        whose message must be confirmed before the task's late ack."""
        return (
            options.get("producer") is None
            and options.get("connection") is None
            and not self.app.conf.task_always_eager
            and self.app.conf.broker_transport_options.get("confirm_publish", False)
            and get_current_worker_task() is None
            and _transport(self.app) == "amqp"
        )

    def _publish(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().apply_async(*args, **kwargs)
        except AttributeError as exc:
            if "'NoneType' object has no attribute" not in str(exc):
                raise
            raise KombuOperationalError(
                f"cannot publish {self.name}: the broker connection is closed ({exc})"
            ) from exc
        except KombuOperationalError as exc:
            # A nack still there after the publish retries reads as an empty OperationalError.
            if not isinstance(exc.__cause__, MessageNacked):
                raise
            raise KombuOperationalError(
                f"cannot publish {self.name}: RabbitMQ refused it (nack) on each retry, as a "
                "quorum queue does while it elects a new leader (a cluster node just stopped); "
                "it was not queued: publish it again"
            ) from exc


def _transport(app: Any) -> str:
    """The broker's transport type ('amqp' for RabbitMQ), looked up once per app."""
    driver: str | None = getattr(app, "_batchapp_transport", None)
    if driver is None:
        with app.connection_for_write() as connection:
            driver = app._batchapp_transport = connection.transport.driver_type
    return driver


class ConfirmedResult(AsyncResult):  # type: ignore[misc]
    """A task's result that first waits for its publish to be confirmed, so a task RabbitMQ
    did not take is an error here rather than a wait for a result that never comes."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self._settle()
        return super().get(*args, **kwargs)

    def _get_task_meta(self) -> Any:
        self._settle()
        return super()._get_task_meta()

    def _settle(self) -> None:
        window = confirms.pending_window(self.app)
        if window is not None:
            window.settle(self.id)
