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
from celery import Task
from kombu.exceptions import OperationalError as KombuOperationalError

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
    """Every batchapp task: countdowns that quorum queues can carry (see delays.py), and a publish
    on a connection the broker closed fails as a connection error, not as kombu's
    ``AttributeError`` for a closed pooled connection (celery/kombu#690)."""

    def apply_async(self, *args: Any, **kwargs: Any) -> Any:
        kwargs = delay_options(self.app, kwargs)
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
