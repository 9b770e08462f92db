"""Contract tests: the behaviour of Celery, kombu and py-amqp that batchapp.internals relies on.

A release that changes one of these fails here, with the hook's name, before it reaches a
worker. They need no broker or database server: an in-memory transport and SQLite files.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from amqp import spec
from amqp.basic_message import Message
from amqp.channel import Channel
from amqp.serialization import dumps
from amqp.transport import TCPTransport
from celery import Celery
from celery.beat import ScheduleEntry
from celery.schedules import schedule
from celery.utils.quorum_queues import detect_quorum_queues
from kombu import Exchange, Queue

from batchapp.internals import contract
from batchapp.internals.channel import socket_timeout, unwaited_confirm_channel
from batchapp.internals.clock import app_clock
from batchapp.internals.result import ResultAfterPublish
from batchapp.internals.result_backend import DatabaseBackend
from batchapp.internals.task_messages import TaskMessages
from batchapp.storage import results

REPO = Path(__file__).resolve().parents[2]


def test_every_hook_fits_the_installed_versions() -> None:
    assert contract.broken_hooks() == []


def test_a_hook_that_is_gone_or_reshaped_is_named() -> None:
    gone = contract.Hook("amqp.channel:Channel._no_such_method")
    reshaped = contract.Hook("amqp.channel:Channel._basic_publish", ("msg", "no_such_param"))
    assert contract.broken_hooks([gone, reshaped]) == [
        "amqp.channel:Channel._no_such_method is gone",
        "amqp.channel:Channel._basic_publish no longer takes no_such_param",
    ]


def test_the_app_refuses_to_start_with_one_line_when_a_hook_is_gone(tmp_path: Path) -> None:
    # A py-amqp without the ack callback the confirm window listens on.
    (tmp_path / "sitecustomize.py").write_text(
        "import amqp.channel\ndel amqp.channel.Channel._on_basic_ack\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "BATCHAPP_DATA_DIR": str(tmp_path / "data"),
        "BATCHAPP_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
        "BATCHAPP_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "batchapp", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("batchapp: Celery internals changed (celery ")
    assert "amqp.channel:Channel._on_basic_ack is gone" in line


# -- internals/channel.py ---------------------------------------------------------------------


class _FakeTransport:
    def having_timeout(self, timeout: float | None) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


class _FakeAmqpConnection:
    """What py-amqp's Channel asks of its connection, with every frame recorded."""

    transport = _FakeTransport()
    confirm_publish = False

    def __init__(self) -> None:
        self.client_properties: dict[str, Any] = {}
        self.channels: dict[int, Any] = {}
        self.frames: list[Any] = []

    def _claim_channel_id(self, channel_id: int) -> None:
        pass

    def channel(self) -> Channel:
        channel = Channel(self, channel_id=1)  # type: ignore[arg-type]
        channel.send_method = lambda method, *args, **kwargs: self.frames.append(method)
        return channel


def _frame(method: tuple[int, int], argsig: str, args: tuple[Any, ...]) -> bytes:
    """A method frame's payload: class and method id, then the arguments."""
    return struct.pack(">HH", *method) + dumps(argsig, args)


def test_an_unwaited_confirm_channel_counts_publishes_and_hears_acks_and_nacks() -> None:
    connection = _FakeAmqpConnection()
    sent: list[int] = []
    acks: list[tuple[int, bool]] = []
    nacks: list[tuple[int, bool]] = []
    channel = unwaited_confirm_channel(
        connection,
        lambda: sent.append(1),
        lambda tag, multiple: acks.append((tag, multiple)),
        lambda tag, multiple: nacks.append((tag, multiple)),
    )
    channel.basic_publish(Message(b"x"), exchange="", routing_key="q")
    channel.basic_publish(Message(b"y"), exchange="", routing_key="q")
    # The broker's Basic.Ack and Basic.Nack frames, as py-amqp's connection hands them over.
    channel.dispatch_method(spec.Basic.Ack, _frame(spec.Basic.Ack, "Lb", (2, True)), None)
    channel.dispatch_method(
        spec.Basic.Nack, _frame(spec.Basic.Nack, "Lbb", (3, False, False)), None
    )
    assert connection.frames == [spec.Confirm.Select, spec.Basic.Publish, spec.Basic.Publish]
    assert (len(sent), acks, nacks) == (2, [(2, True)], [(3, False)])


def test_a_socket_timeout_applies_inside_and_is_restored_after() -> None:
    transport = TCPTransport("127.0.0.1:1", connect_timeout=1)
    left, right = socket.socketpair()
    transport.sock = left

    class KombuConnection:
        connection = type("AmqpConnection", (), {"transport": transport})()

    try:
        left.settimeout(None)
        with socket_timeout(KombuConnection(), 0.25):
            assert left.gettimeout() == 0.25
            with pytest.raises(TimeoutError):
                left.recv(1)
        assert left.gettimeout() is None
    finally:
        left.close()
        right.close()


# -- internals/task_messages.py ----------------------------------------------------------------


@pytest.fixture
def memory_app() -> Iterator[Celery]:
    app = Celery("contract", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.task_queues = [Queue("work", Exchange("work"), routing_key="work")]
    yield app
    app.close()


def _received(app: Celery, queue: str) -> list[Any]:
    with app.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        messages = []
        while True:
            try:
                messages.append(simple.get(block=False))
            except simple.Empty:
                return messages


def test_a_built_message_is_the_one_apply_async_sends_but_for_its_id(memory_app: Celery) -> None:
    @memory_app.task(name="contract.add", time_limit=30, soft_time_limit=20)
    def add(a: int, b: int) -> int:
        return a + b

    options = add._get_exec_options()
    assert options["time_limit"] == 30 and options["soft_time_limit"] == 20
    sent = add.apply_async((1, 2), queue="work")
    with memory_app.producer_or_acquire() as producer:
        messages = TaskMessages(add, "work")
        producer.maybe_declare(messages.queue)
        built = messages.send(producer, (1, 2))
    by_id = {m.headers["id"]: m for m in _received(memory_app, "work")}
    assert set(by_id) == {sent.id, built}
    stock, ours = by_id[sent.id], by_id[built]
    differ = {"id", "root_id"}
    assert {k: v for k, v in ours.headers.items() if k not in differ} == {
        k: v for k, v in stock.headers.items() if k not in differ
    }
    assert ours.headers["timelimit"] == [30, 20]
    assert ours.decode() == stock.decode()


# -- internals/result.py -----------------------------------------------------------------------


def test_every_read_of_a_result_settles_first(memory_app: Celery) -> None:
    settled: list[str] = []

    class Counted(ResultAfterPublish):
        def settle(self) -> None:
            settled.append(self.id)

    memory_app.backend.store_result("t1", 7, "SUCCESS")
    result = Counted("t1", app=memory_app)
    assert result.state == "SUCCESS"
    assert result.ready()
    assert result.result == 7
    assert result.get(timeout=1) == 7
    assert len(settled) >= 4 and set(settled) == {"t1"}


# -- internals/result_backend.py ---------------------------------------------------------------


def test_the_backend_stores_reads_and_cleans_through_its_one_statement_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Celery("contract-db", set_as_current=False)
    backend = DatabaseBackend(app=app, url=f"sqlite:///{tmp_path / 'results.sqlite'}", expires=1)
    statements: list[int] = []
    run = results.run
    monkeypatch.setattr(
        results,
        "run",
        lambda engine, kind, *args: statements.append(kind) or run(engine, kind, *args),
    )
    backend.store_result("t1", 42, "SUCCESS")
    meta = backend.get_task_meta("t1")
    assert (meta["status"], meta["result"]) == ("SUCCESS", 42)
    assert statements == [results.UPSERT, results.SELECT]
    cleaned: list[bool] = []
    monkeypatch.setattr(DatabaseBackend, "_cleanup", lambda self: cleaned.append(True))
    backend.cleanup()
    assert cleaned == [True]


# -- internals/delays.py -----------------------------------------------------------------------


def test_quorum_queues_are_detected_as_the_worker_detects_them() -> None:
    app = Celery("contract-q", set_as_current=False)
    app.conf.task_queues = [
        Queue("q", Exchange("q", type="topic"), queue_arguments={"x-queue-type": "quorum"})
    ]
    app.conf.worker_detect_quorum_queues = True
    assert detect_quorum_queues(app, "amqp")[0] is True
    assert detect_quorum_queues(app, "redis")[0] is False


# -- internals/clock.py ------------------------------------------------------------------------


def test_beats_schedules_and_a_ticks_expiry_read_the_apps_clock(memory_app: Celery) -> None:
    @memory_app.task(name="contract.tick")
    def tick() -> None:
        pass

    shifted = datetime.now(UTC) - timedelta(hours=1)
    with app_clock(memory_app, lambda: shifted):
        assert schedule(timedelta(seconds=10), app=memory_app).now() == shifted
        entry = ScheduleEntry(
            name="t", task="contract.tick", schedule=timedelta(seconds=10), app=memory_app
        )
        assert entry.last_run_at == shifted
        tick.apply_async(expires=5, queue="work")
    assert abs(memory_app.now() - datetime.now(UTC)) < timedelta(seconds=5)  # restored after
    (message,) = _received(memory_app, "work")
    assert datetime.fromisoformat(message.headers["expires"]) == shifted + timedelta(seconds=5)
    assert float(message.properties["expiration"]) == 5000  # RabbitMQ's TTL, in milliseconds
