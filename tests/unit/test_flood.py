"""What the worker's loop does while bad messages flood it, on plain values: when the calls
consumer widens its prefetch and narrows it back, and that NotRegistered results are written
off the loop, a bounded number at a time."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from batchapp.broker import consumer
from batchapp.broker.queues import CALLS
from batchapp.internals.consumer import CallsPrefetch

SERVED = frozenset({"batchapp.tasks.calculate_sum"})


class Message:
    def __init__(self, body: bytes, task: str = "batchapp.tasks.calculate_sum") -> None:
        self.headers = {"task": task, "id": "id-1", "lang": "py"}
        self.content_type, self.content_encoding = "application/json", "utf-8"
        self.body = body
        self.delivery_info = {"routing_key": CALLS}
        self.acknowledged = False
        self.rejected = False

    def reject_log_error(self, *_: Any, requeue: bool) -> None:
        self.rejected = not requeue


def test_twenty_bad_messages_within_a_second_start_one_surge() -> None:
    surge = consumer.Surge()

    starts = [surge.bad(0.01 * n) for n in range(40)]

    assert starts == [False] * 19 + [True] + [False] * 20


def test_bad_messages_spread_thinly_start_no_surge() -> None:
    surge = consumer.Surge()

    assert not any(surge.bad(0.1 * n) for n in range(100))


def test_a_surge_ends_once_after_a_second_without_a_bad_message() -> None:
    surge = consumer.Surge()
    for n in range(20):
        surge.bad(0.01 * n)

    assert [surge.calm(t) for t in (0.5, 1.0, 1.2, 1.3)] == [False, False, True, False]
    assert not surge.wide


def test_a_bad_message_is_rejected_and_counted_a_good_one_is_not() -> None:
    rejected: list[int] = []
    handled: list[Message] = []
    bad, good = Message(b"not json"), Message(b"[[1], {}, {}]")

    for message in (bad, good):
        consumer.on_task_message(
            handled.append, SERVED, None, (), message, on_reject=lambda: rejected.append(1)
        )

    assert (bad.rejected, good.rejected, handled, rejected) == (True, False, [good], [1])


class BlockingBackend:
    reads_rejections = True

    def __init__(self) -> None:
        self.go, self.entered = threading.Event(), threading.Event()
        self.written: list[str] = []
        self.threads: set[str] = set()

    def mark_as_failure(self, task_id: str, exc: BaseException) -> None:
        self.entered.set()
        self.go.wait(10)
        self.threads.add(threading.current_thread().name)
        self.written.append(task_id)


def test_unknown_task_results_are_written_off_the_loop_and_at_most_a_backlog_wait() -> None:
    backend = BlockingBackend()
    recorder = consumer.Recorder(SimpleNamespace(backend=backend), backlog=3)

    def refuse(n: int) -> None:
        message = Message(b"[[], {}, {}]", task="nope.unknown")
        message.headers["id"] = f"id-{n}"
        consumer.on_task_message(
            lambda _: None, SERVED, recorder.app, (), message, recorder=recorder
        )

    refuse(0)
    assert backend.entered.wait(10)
    for n in range(1, 10):
        refuse(n)
    backend.go.set()
    recorder.waiting.join()

    # One being written when the rest arrived, three waiting, six dropped.
    assert len(backend.written) == 4
    assert recorder.dropped == 6
    assert backend.threads == {"batchapp-not-registered"}


class Channel:
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls

    def basic_qos(self, size: int, count: int, apply_global: bool) -> None:
        self.calls.append(("basic_qos", count, apply_global))


class TaskConsumer:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.channel = Channel(self.calls)
        self.queues = [SimpleNamespace(name=name) for name in ("batchapp.chunks", CALLS)]

    def consuming_from(self, name: str) -> bool:
        return name in {q.name for q in self.queues}

    def cancel_by_queue(self, name: str) -> None:
        self.calls.append(("cancel", name))

    def add_queue(self, queue: Any) -> None:
        self.calls.append(("add", queue.name))

    def consume(self) -> None:
        self.calls.append(("consume",))


class Hub:
    def __init__(self) -> None:
        self.soon: list[Any] = []

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.soon.append((callback, args))

    def call_repeatedly(self, delay: float, callback: Any) -> None:
        pass


def celery_consumer(qos_global: bool) -> Any:
    return SimpleNamespace(
        hub=Hub(),
        task_consumer=TaskConsumer(),
        qos=SimpleNamespace(value=2),
        qos_global=qos_global,
        connection_errors=(ConnectionError,),
    )


def test_a_surge_consumes_the_calls_queue_again_with_a_wider_prefetch_then_narrows_it() -> None:
    c = celery_consumer(qos_global=False)
    prefetch = CallsPrefetch(c)

    for _ in range(consumer.SURGE_BAD):
        prefetch.on_reject()
    for callback, args in c.hub.soon:
        callback(*args)
    prefetch.surge.recent.append(-10.0)  # the last bad message, long ago
    prefetch.check()

    once = [
        ("basic_qos", "PREFETCH", False),
        ("cancel", CALLS),
        ("add", CALLS),
        ("consume",),
        ("basic_qos", 2, False),
    ]
    widen = [tuple(consumer.SURGE_PREFETCH if x == "PREFETCH" else x for x in c) for c in once]
    narrow = [tuple(2 if x == "PREFETCH" else x for x in c) for c in once]
    assert len(c.hub.soon) == 1
    assert c.task_consumer.calls == widen + narrow


def test_a_channel_wide_prefetch_is_left_alone() -> None:
    c = celery_consumer(qos_global=True)
    prefetch = CallsPrefetch(c)

    for _ in range(consumer.SURGE_BAD):
        prefetch.on_reject()
    for callback, args in c.hub.soon:
        callback(*args)

    assert c.task_consumer.calls == []
