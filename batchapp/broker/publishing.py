"""Publish many messages and have RabbitMQ confirm them as one batch.

With ``confirm_publish`` every ``apply_async`` waits for its own confirm, which RabbitMQ sends
once the message is on disk: about 2 ms each. A job's chunks are published together, so they are
confirmed together: all are sent on a channel in confirm mode (kept with its pooled connection
for the next batch), then one wait lasts until the broker has acked the last.

Every wait on the broker here is bounded: a broker that takes the publishes but never answers
(a lost reply, a blocked connection) ends in :class:`BrokerTimeout`, never in a hang.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from amqp.exceptions import IrrecoverableConnectionError, MessageNacked
from celery import Task, uuid
from kombu.exceptions import OperationalError as KombuOperationalError

from batchapp.broker import confirms
from batchapp.broker.delays import delay_options
from batchapp.internals.channel import socket_timeout, unwaited_confirm_channel
from batchapp.internals.result import ResultAfterPublish
from batchapp.internals.task_messages import TaskMessages

__all__ = ["BatchappTask", "BrokerTimeout", "ConfirmedResult", "TaskMessages", "publish_batch"]

BROKER_TIMEOUT_S = 30.0


class BrokerTimeout(TimeoutError):
    """The broker did not answer in time; the batch's messages may or may not be queued."""


def publish_batch(
    app: Any, publish: Callable[[Any], object], timeout: float = BROKER_TIMEOUT_S
) -> None:
    """Call ``publish(producer)``, then wait until the broker has confirmed every message it
    sent; a nack raises, and so does any wait past ``timeout`` s.

    ``publish`` must pass ``retry=False``: a retry would resend on another channel, outside
    the batch. On a transport without confirms (the embedded folder broker) it just publishes.
    """
    with app.pool.acquire(block=True) as connection:
        if connection.transport.driver_type != "amqp":
            with app.producer_or_acquire() as producer:
                publish(producer)
            return
        confirming: _ConfirmChannel | None = None
        first = 0
        try:
            with bounded(connection, timeout):
                confirming = _ConfirmChannel.on(app, connection)
                first = confirming.sent
                publish(confirming.producer)
                deadline = time.monotonic() + timeout
                while confirming.acked < confirming.sent:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError()
                    connection.drain_events(timeout=remaining)
        except BaseException as exc:
            # Its confirms are out of step now (bounded() dropped the connection anyway).
            _ConfirmChannel.forget(connection)
            if not isinstance(exc, BrokerTimeout):
                raise
            acked, sent = (confirming.acked, confirming.sent) if confirming else (first, first)
            raise BrokerTimeout(
                f"{exc}: it confirmed {acked - first} of {sent - first} messages "
                "(the others may or may not be queued)"
            ) from None


class _ConfirmChannel:
    """A channel in confirm mode that stays with its pooled connection for the next batch,
    which then costs no channel open, confirm.select and close (three round trips)."""

    _kept: ClassVar[weakref.WeakKeyDictionary[Any, _ConfirmChannel]] = weakref.WeakKeyDictionary()

    def __init__(self, app: Any, connection: Any) -> None:
        self.transport = connection.connection  # the socket it was opened on
        self.channel = unwaited_confirm_channel(
            connection, self._count_sent, self._on_ack, self._on_nack
        )
        self.sent = self.acked = 0
        self.producer = app.amqp.Producer(self.channel)

    @classmethod
    def on(cls, app: Any, connection: Any) -> _ConfirmChannel:
        """The kept channel of ``connection``, or a new one if it has none that is open."""
        kept = cls._kept.get(connection)
        if kept is None or not kept.channel.is_open or kept.transport is not connection.connection:
            kept = cls._kept[connection] = cls(app, connection)
        return kept

    @classmethod
    def forget(cls, connection: Any) -> None:
        cls._kept.pop(connection, None)

    def _count_sent(self) -> None:
        self.sent += 1

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self.acked = max(self.acked, delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        raise MessageNacked(f"RabbitMQ refused message {delivery_tag} of a batch")


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
        with socket_timeout(connection, timeout):
            yield
    except TimeoutError:
        # Replies are being lost: a polite close would wait for one more. Drop the socket;
        # a pooled connection is reopened on its next use.
        connection.collect()
        raise BrokerTimeout(f"RabbitMQ did not answer within {timeout:g} s") from None
    except BaseException:
        connection.collect()
        raise


class BatchappTask(Task):  # type: ignore[misc]
    """Every batchapp task: countdowns that quorum queues can carry (see delays.py), confirms
    that a caller's burst of publishes does not wait for one by one (see confirms.py), and a
    publish on a connection the broker closed fails as a connection error, not as kombu's
    ``AttributeError`` for a closed pooled connection (celery/kombu#690); any other
    ``AttributeError`` stays what it is."""

    # How long a caller waits for RabbitMQ's confirms (tasks.py sets BATCHAPP_BROKER_TIMEOUT).
    confirm_timeout = BROKER_TIMEOUT_S

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> Any:
        # producer=None or connection=None, as Celery's beat passes them, means "not given".
        options = {
            name: value
            for name, value in delay_options(self.app, options).items()
            if value is not None or name not in ("producer", "connection")
        }
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
            task_id, backend=self.backend, task_name=self.name, app=self.app, **kwargs
        )

    def _confirms_in_window(self, options: dict[str, Any]) -> bool:
        """A caller's own publish on RabbitMQ with confirms; not one inside a running task,
        whose message must be confirmed before the task's late ack."""
        return (
            options.get("producer") is None
            and options.get("connection") is None
            and not self.app.conf.task_always_eager
            and self.app.conf.broker_transport_options.get("confirm_publish", False)
            and self.app.current_worker_task is None
            and _transport(self.app) == "amqp"
        )

    def _publish(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("producer") or kwargs.get("connection") or self.app.conf.task_always_eager:
            return self._publish_on(kwargs.get("producer"), *args, **kwargs)
        # The pooled producer Celery would take, taken here so that its state can be read
        # if the publish fails.
        with self.app.producer_or_acquire() as producer:
            return self._publish_on(producer, *args, **{**kwargs, "producer": producer})

    def _publish_on(self, through: Any, *args: Any, **kwargs: Any) -> Any:
        """Celery's publish; ``through`` is the producer it uses, if known."""
        connection = kwargs.get("connection") or (
            through.connection if through is not None else None
        )
        was_connected = connection is not None and connection.connected
        try:
            return super().apply_async(*args, **kwargs)
        except AttributeError as exc:
            # kombu reads attributes of a closed channel, which are None by then; the message
            # says so only for the AttributeError of a connection that is in fact closed.
            closing = "'NoneType' object has no attribute" in str(exc)
            if not (closing and closed(through, connection, was_connected)):
                raise
            raise KombuOperationalError(
                f"cannot publish {self.name}: the broker connection is closed ({exc})"
            ) from exc
        except IrrecoverableConnectionError as exc:
            # kombu retries only the errors py-amqp calls recoverable; a node that is stopping
            # may close connections with 541 INTERNAL_ERROR, which py-amqp does not.
            raise KombuOperationalError(
                f"cannot publish {self.name}: the broker closed the connection "
                f"({exc.reply_code} {exc.reply_text}); it may not have been queued: "
                "publish it again"
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


def closed(producer: Any, connection: Any, was_connected: bool) -> bool:
    """Whether a publish went through a connection that closed: a producer whose channel lost
    its connection (py-amqp drops it on close), or a connection that was connected before the
    publish and is not now (one never connected yet proves nothing)."""
    if producer is not None and producer.connection is None:
        return True
    return was_connected and connection is not None and not connection.connected


_transports: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _transport(app: Any) -> str:
    """The broker's transport type ('amqp' for RabbitMQ), looked up once per app."""
    driver = _transports.get(app)
    if driver is None:
        with app.connection_for_write() as connection:
            driver = _transports[app] = connection.transport.driver_type
    return driver


class ConfirmedResult(ResultAfterPublish):
    """A task's result that first waits for its publish to be confirmed, so a task RabbitMQ
    did not take is an error here rather than a wait for a result that never comes."""

    def settle(self) -> None:
        window = confirms.pending_window(self.app)
        if window is not None:
            window.settle(self.id)
