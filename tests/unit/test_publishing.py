"""A publish error keeps its name, except kombu's AttributeError for a connection that closed,
which is a connection error saying so (no broker here: channels are closed by hand)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import amqp
import pytest
from celery import Task
from kombu import Connection, Producer
from kombu.exceptions import OperationalError

from batchapp.broker.publishing import closed
from batchapp.tasks import calculate_sum

BUG = "'NoneType' object has no attribute 'total'"


def closed_channel_producer() -> Producer:
    """A producer on a py-amqp channel as the broker's close leaves it: without connection."""
    channel = amqp.Channel(amqp.Connection(host="127.0.0.1:1"), channel_id=1)
    channel.is_open, channel.connection = False, None
    return Producer(channel)


def a_bug(*args: Any, **kwargs: Any) -> None:
    raise AttributeError(BUG)


def test_a_publish_on_a_closed_channel_is_a_connection_error_saying_so() -> None:
    with pytest.raises(OperationalError, match="the broker connection is closed") as raised:
        calculate_sum.apply_async((3,), producer=closed_channel_producer())

    assert isinstance(raised.value.__cause__, AttributeError)


def test_an_attribute_error_of_an_open_connection_keeps_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Task, "apply_async", a_bug)
    producer = SimpleNamespace(connection=SimpleNamespace(connected=True))

    with pytest.raises(AttributeError, match="'total'"):
        calculate_sum.apply_async((3,), producer=producer)


def test_a_connection_not_connected_yet_is_not_called_closed() -> None:
    # A pooled producer before its first publish: a bug raised then is not a broker error.
    connection = Connection("amqp://guest:guest@127.0.0.1:1//")
    producer = SimpleNamespace(connection=connection)

    assert not closed(producer, connection, was_connected=False)
    assert closed(producer, SimpleNamespace(connected=False), was_connected=True)


def test_a_connection_the_broker_closed_with_an_internal_error_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a stopping cluster node sent a caller mid-publish: py-amqp calls it irrecoverable,
    # so kombu raised it raw instead of as the connection error a caller catches.
    def closed_by_broker(*args: Any, **kwargs: Any) -> None:
        raise amqp.exceptions.InternalError("INTERNAL_ERROR", reply_code=541)

    monkeypatch.setattr(Task, "apply_async", closed_by_broker)
    producer = SimpleNamespace(connection=SimpleNamespace(connected=True))

    with pytest.raises(OperationalError, match=r"closed the connection \(541 INTERNAL_ERROR\)"):
        calculate_sum.apply_async((3,), producer=producer)
