"""Publish many messages and have RabbitMQ confirm them as one batch.

With ``confirm_publish`` every ``apply_async`` waits for its own confirm, which RabbitMQ sends
once the message is on disk: about 2 ms each. A job's chunks are published together, so they are
confirmed together: all are sent on a channel of their own in confirm mode, then one wait lasts
until the broker has acked the last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from amqp.exceptions import MessageNacked
from celery import Task
from kombu.exceptions import OperationalError as KombuOperationalError

from batchapp.delays import delay_options

CONFIRM_TIMEOUT_S = 30.0


class ConfirmTimeout(TimeoutError):
    """The broker did not confirm a batch in time; its messages may or may not be queued."""


def publish_batch(app: Any, publish: Callable[[Any], int]) -> None:
    """Call ``publish(producer)`` (it returns how many messages it sent), then wait until the
    broker has confirmed them all; a nack or a timeout raises.

    ``publish`` must pass ``retry=False``: a retry would resend on another channel, outside
    the batch. On a transport without confirms (the embedded folder broker) it just publishes.
    """
    with app.pool.acquire(block=True) as connection:
        if connection.transport.driver_type != "amqp":
            with app.producer_or_acquire() as producer:
                publish(producer)
            return
        # A pooled connection that a broker drop closed is reopened here, not used closed.
        connection.ensure_connection(max_retries=3)
        channel = connection.channel()
        try:
            acked = _confirm_mode(channel)
            sent = publish(app.amqp.Producer(channel))
            deadline = time.monotonic() + CONFIRM_TIMEOUT_S
            while acked[0] < sent:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConfirmTimeout(
                        f"RabbitMQ confirmed {acked[0]} of {sent} messages in "
                        f"{CONFIRM_TIMEOUT_S:g} s"
                    )
                connection.drain_events(timeout=remaining)
        finally:
            channel.close()


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
