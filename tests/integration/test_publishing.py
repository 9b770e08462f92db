"""A job's chunk messages, built once per batch and confirmed as one batch on a kept channel:
the same messages Celery's apply_async sends, and no message left unconfirmed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from amqp.exceptions import MessageNacked
from celery.signals import after_task_publish, before_task_publish

from batchapp.broker import confirms, guard, publishing, queues
from batchapp.celery import app
from batchapp.tasks import publish_chunks, run_chunk
from tests.integration.conftest import purge_queue, refusing_queue

# Header values that are the message's own (its id, and what is made from its id or args).
OWN = ("id", "root_id", "argsrepr")


@pytest.fixture(autouse=True)
def empty_queues() -> Iterator[None]:
    purge_queue()
    yield
    purge_queue()


def take(queue: str) -> list[Any]:
    """Every message on ``queue``, taken off it."""
    taken = []
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            taken.append(message)
    return taken


def properties(message: Any) -> dict[str, Any]:
    """The message's properties that are not its own (headers are compared apart)."""
    own = ("correlation_id", "application_headers")
    return {k: v for k, v in message.properties.items() if k not in own}


def test_a_chunk_message_is_the_one_apply_async_sends_but_for_its_id() -> None:
    sent = run_chunk.apply_async(("job-a", 0), queue=queues.CHUNKS)
    # apply_async leaves its confirm to the caller's confirm window; the batch goes out on
    # another channel and waits only for its own. Nothing orders the two in the queue, and the
    # first may not even be there yet, until its confirm is settled (as a result's get() would).
    window = confirms.pending_window(app)
    assert window is not None
    window.settle(sent.id)
    publish_chunks("job-b", [1, 2], queues.CHUNKS)

    taken = take(queues.CHUNKS)
    assert len(taken) == 3
    # Told apart by id and args, not by their order in the queue.
    [celerys] = [m for m in taken if m.headers["id"] == sent.id]
    ours = sorted((m for m in taken if m is not celerys), key=lambda m: json.loads(m.body)[0])
    assert json.loads(celerys.body)[0] == ["job-a", 0]
    for message, args in zip(ours, [["job-b", 1], ["job-b", 2]], strict=True):
        assert json.loads(message.body) == [args, {}, json.loads(celerys.body)[2]]
        headers, expected = message.headers, celerys.headers
        assert {k: v for k, v in headers.items() if k not in OWN} == {
            k: v for k, v in expected.items() if k not in OWN
        }
        assert headers["root_id"] == headers["id"] == message.properties["correlation_id"]
        assert headers["argsrepr"] == repr(tuple(args))
        assert properties(message) == properties(celerys)
        assert message.properties["delivery_mode"] == 2
        assert message.delivery_info["exchange"] == celerys.delivery_info["exchange"]
        assert message.delivery_info["routing_key"] == celerys.delivery_info["routing_key"]
        served = {run_chunk.name}
        assert guard.problem(headers, message.content_type, "utf-8", message.body, served) is None
    assert len({m.headers["id"] for m in ours}) == 2


def test_publish_signals_and_sent_events_fire_and_every_publish_is_confirmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(app.conf, "task_send_sent_event", True)
    before: list[str] = []
    after: list[str] = []

    def on_before(headers: dict[str, Any], **_: Any) -> None:
        before.append(headers["id"])

    def on_after(headers: dict[str, Any], **_: Any) -> None:
        after.append(headers["id"])

    before_task_publish.connect(on_before, weak=False)
    after_task_publish.connect(on_after, weak=False)
    try:
        publish_chunks("job-c", [0, 1, 2], queues.CHUNKS)
    finally:
        before_task_publish.disconnect(on_before)
        after_task_publish.disconnect(on_after)

    sent = [message.headers["id"] for message in take(queues.CHUNKS)]
    assert before == after == sent and len(sent) == 3
    with app.pool.acquire(block=True) as connection:
        kept = publishing._ConfirmChannel.on(app, connection)
        # Each chunk and its task-sent event: all six were waited for, not just the chunks.
        assert kept.sent >= 6
        assert kept.acked == kept.sent


def test_batches_share_a_channel_until_one_is_refused() -> None:
    full_queue = refusing_queue()

    def channel_now() -> Any:
        with app.pool.acquire(block=True) as connection:
            return publishing._ConfirmChannel.on(app, connection).channel

    publish_chunks("job-d", [0], queues.CHUNKS)
    first = channel_now()
    publish_chunks("job-d", [1], queues.CHUNKS)
    assert channel_now() is first

    def refused(producer: Any) -> None:
        producer.publish(
            b"{}",
            exchange=full_queue.exchange,
            routing_key=full_queue.routing_key,
            declare=[full_queue],
        )

    with pytest.raises(MessageNacked):
        publishing.publish_batch(app, refused, timeout=10)
    publish_chunks("job-d", [2], queues.CHUNKS)
    assert channel_now() is not first
    assert [json.loads(m.body)[0] for m in take(queues.CHUNKS)] == [
        ["job-d", 0],
        ["job-d", 1],
        ["job-d", 2],
    ]


def test_a_batch_that_breaks_midway_is_sent_again_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sends = 0
    send = publishing.TaskMessages.send

    def breaks_at_the_second(self: publishing.TaskMessages, producer: Any, args: Any) -> str:
        nonlocal sends
        sends += 1
        if sends == 2:
            raise ConnectionResetError("the broker dropped the connection")
        return send(self, producer, args)

    monkeypatch.setattr(publishing.TaskMessages, "send", breaks_at_the_second)
    publish_chunks("job-e", [0, 1, 2], queues.CHUNKS)
    monkeypatch.undo()
    publish_chunks("job-e", [3], queues.CHUNKS)

    indexes = [json.loads(m.body)[0][1] for m in take(queues.CHUNKS)]
    # Chunk 0 went out before the break and again with the rest: the ledger drops the second.
    assert sorted(set(indexes)) == [0, 1, 2, 3]
    assert sorted(indexes) in ([0, 1, 2, 3], [0, 0, 1, 2, 3])
