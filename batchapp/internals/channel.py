"""py-amqp channel hooks: a confirm-mode channel whose publishes do not wait, and a bounded
socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def unwaited_confirm_channel(
    connection: Any,
    on_sent: Callable[[], None],
    on_ack: Callable[[int, bool], None],
    on_nack: Callable[[int, bool], None],
) -> Any:
    """A new channel of ``connection`` in confirm mode whose publishes do not wait for their
    confirm (py-amqp's ``basic_publish`` does, with ``confirm_publish``). Each publish calls
    ``on_sent``, so the caller counts delivery tags as RabbitMQ does (a task-sent event on the
    channel is a publish too); each ack and nack goes to its handler."""
    channel = connection.channel()
    channel.confirm_select()
    # Private: py-amqp's publish without the wait for a confirm that its public basic_publish
    # makes with confirm_publish. Stands in for a publish that returns before the confirm.
    plain_publish = channel._basic_publish

    def counted_publish(*args: Any, **kwargs: Any) -> Any:
        done = plain_publish(*args, **kwargs)
        on_sent()
        return done

    channel.basic_publish = counted_publish
    # Undocumented: py-amqp's per-channel callbacks for basic.ack and basic.nack frames. Stands
    # in for a confirm listener, which py-amqp does not offer publicly.
    channel.events["basic_ack"].add(on_ack)
    channel.events["basic_nack"].add(on_nack)
    return channel


@contextmanager
def socket_timeout(connection: Any, timeout: float) -> Iterator[None]:
    """Every read and write on the socket of kombu ``connection`` (py-amqp) inside gives up
    after ``timeout`` s with :class:`TimeoutError`."""
    # Undocumented: py-amqp's transport.having_timeout. Stands in for a per-call timeout on
    # the replies py-amqp waits for with none (confirm_select, channel close, queue declare).
    with connection.connection.transport.having_timeout(timeout):
        yield
