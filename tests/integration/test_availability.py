"""No message can take the worker down or make work loop, and no broker wait hangs the CLI.

The fuzz test throws thousands of generated malformed messages at a real prefork worker's
queues, then counts them in the dead-letter queue and checks the worker still answers. The guard
itself, on plain values, is tested in tests/unit/test_availability.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Producer

from batchapp.broker import guard, queues
from batchapp.broker.dead_letters import DEAD_LETTER_QUEUE, dead_letter_queue_of
from batchapp.celery import app
from batchapp.cli import processes
from batchapp.tasks import calculate_sum, run_chunk
from tests.integration.conftest import RESULT_TIMEOUT, RUN_DATA_DIR, Stack
from tests.support import rabbitmq_vhost, run_cli
from tests.unit.test_availability import SERVED, malformed_messages, task_body, task_headers

# batchapp's three queues and Celery's default one, each where this configuration has it (a
# worker can consume only declared queues once task_create_missing_queues is off).
TASK_QUEUES = tuple(
    name
    for name in ("celery", *queues.ALL)
    if name in app.amqp.queues or app.conf.task_create_missing_queues
)
FUZZ_EXAMPLES = 3000


# --- a real worker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[processes.CeleryProcess]:
    """A prefork worker consuming batchapp's queues and Celery's default one."""
    process = processes.worker(
        stack.env,
        RUN_DATA_DIR / "logs" / f"availability-{uuid.uuid4().hex[:6]}.log",
        extra=["-Q", ",".join(TASK_QUEUES)],
    )
    stack.started.append(process)
    process.wait_ready()
    with app.connection_for_write() as connection:
        # The worker declared it (before its task queues): a passive declare would fail if not.
        dead_letter_queue_of(app)(connection.default_channel).queue_declare(passive=True)
        dead_letter_queue_of(app)(connection.default_channel).purge()
    yield process


def dead_letters() -> int:
    with app.connection_for_write() as connection:
        _, count, _ = connection.default_channel.queue_declare(DEAD_LETTER_QUEUE, passive=True)
        return int(count)


def wait_for_dead_letters(count: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while (found := dead_letters()) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def publish(producer: Producer, queue: str, message: tuple[Any, bytes, Any, str]) -> None:
    headers, body, content_type, content_encoding = message
    producer.publish(
        body,
        exchange="",
        routing_key=queue,
        headers=headers,
        content_type=content_type or "",
        content_encoding=content_encoding,
        retry=False,
    )


def still_serving() -> bool:
    return bool(calculate_sum.delay(100).get(timeout=RESULT_TIMEOUT) == 5050)


def test_the_messages_from_the_issue_are_dead_lettered_and_the_worker_serves_on(
    worker: processes.CeleryProcess,
) -> None:
    start = dead_letters()
    no_id = task_headers()
    del no_id["id"]
    issue_messages = [
        (no_id, task_body()),
        (task_headers(), b'{"args": [100], "kwargs": {}, "embed": {}}'),
        (task_headers(retries=guard.MAX_RETRIES + 1), task_body()),
        (task_headers(eta="not a time"), task_body()),
        (task_headers(timelimit="soon"), task_body()),
        (task_headers(origin=b"\xff\xfe not UTF-8"), task_body()),
    ]
    with app.connection_for_write() as connection:
        producer = Producer(connection.default_channel)
        for index, (headers, body) in enumerate(issue_messages):
            queue = TASK_QUEUES[index % len(TASK_QUEUES)]
            publish(producer, queue, (headers, body, "application/json", "utf-8"))
    # The looping built-in: a chord_unlock retrying every 0.01 s with no retry limit.
    app.send_task(
        "celery.chord_unlock",
        args=["group-id", {"task": "batchapp.tasks.calculate_sum", "args": [1]}],
        kwargs={"interval": 0.01, "max_retries": None},
    )

    assert wait_for_dead_letters(start + 7) == start + 7
    assert worker.popen.poll() is None
    assert still_serving()
    assert dead_letters() == start + 7, "the chord_unlock was not retried into a loop"
    log = worker.log()
    assert f"from queue {TASK_QUEUES[0]!r} into batchapp.dead: no 'id' header" in log
    assert "'celery.chord_unlock' is not served here" in log
    assert "beyond the cap of 10 retries" in log
    assert "Unrecoverable error" not in log


class Publisher:
    """Publishes raw messages; one the broker itself refuses (it closes the connection on a
    header such as -inf) is counted as refused, not sent, and the connection is reopened."""

    def __init__(self) -> None:
        self.connection = app.connection_for_write()
        self.sent = 0
        self.refused = 0

    def __call__(self, queue: str, message: tuple[Any, bytes, Any, str]) -> None:
        try:
            publish(Producer(self.connection.default_channel), queue, message)
        except self.connection.connection_errors + self.connection.channel_errors:
            self.refused += 1
            self.connection.collect()
            self.connection = app.connection_for_write()
        else:
            self.sent += 1

    def close(self) -> None:
        self.connection.release()


def test_thousands_of_malformed_messages_are_dead_lettered_and_the_worker_serves_on(
    worker: processes.CeleryProcess,
) -> None:
    start = dead_letters()
    logged = worker.log().count("into batchapp.dead:")
    publisher = Publisher()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(message=malformed_messages, queue=st.sampled_from(TASK_QUEUES))
    def publish_malformed(message: tuple[Any, bytes, Any, str], queue: str) -> None:
        headers, body, content_type, content_encoding = message
        assert guard.problem(headers, content_type, content_encoding, body, SERVED)
        publisher(queue, message)

    started = time.monotonic()
    try:
        publish_malformed()
    finally:
        publisher.close()
    found = wait_for_dead_letters(start + publisher.sent) - start
    print(
        f"\nfuzz: {publisher.sent:,} malformed messages published to {len(TASK_QUEUES)} queues "
        f"({publisher.refused} more refused by RabbitMQ itself), {found:,} dead-lettered, "
        f"{time.monotonic() - started:.1f} s"
    )
    assert found == publisher.sent
    assert worker.popen.poll() is None
    assert still_serving()
    assert worker.log().count("into batchapp.dead:") - logged == found
    assert "Unrecoverable error" not in worker.log()


FLOOD = 3000


def flood_messages(count: int) -> Iterator[tuple[Any, bytes, Any, str]]:
    """``count`` malformed messages of a few kinds, each one the guard refuses."""
    no_id = task_headers()
    del no_id["id"]
    kinds = [
        (task_headers(), b"not JSON", "application/json", "utf-8"),
        (no_id, task_body(), "application/json", "utf-8"),
        (task_headers("celery.chord_unlock"), task_body(), "application/json", "utf-8"),
        (task_headers(), task_body(), "application/x-python-serialize", "binary"),
        (task_headers(retries=guard.MAX_RETRIES + 1), task_body(), "application/json", "utf-8"),
    ]
    for index in range(count):
        headers, body, content_type, encoding = kinds[index % len(kinds)]
        if isinstance(headers.get("id"), str):
            headers = {**headers, "id": f"flood-{index}"}
        yield headers, body, content_type, encoding


def test_calls_complete_during_a_flood_of_malformed_messages(
    worker: processes.CeleryProcess,
) -> None:
    """A bad message costs the worker a reject (one frame, no reply), not a publish and a wait:
    calls queued behind thousands of them on batchapp.calls keep completing."""
    start = dead_letters()
    logged = worker.log().count("into batchapp.dead:")
    published = threading.Event()

    def flood() -> None:
        # A connection of its own without publisher confirms: as fast as the broker takes them.
        with Connection(app.conf.broker_url) as connection:
            producer = Producer(connection.default_channel)
            for message in flood_messages(FLOOD):
                publish(producer, queues.CALLS, message)
        published.set()

    def drained() -> bool:
        return published.is_set() and dead_letters() >= start + FLOOD

    flooding = threading.Thread(target=flood, daemon=True)
    began = time.monotonic()
    flooding.start()
    latencies: list[float] = []
    drained_after = None
    deadline = began + 60
    while drained_after is None and time.monotonic() < deadline:
        sent = time.monotonic()
        assert calculate_sum.delay(100).get(timeout=RESULT_TIMEOUT) == 5050
        latencies.append(time.monotonic() - sent)
        if drained():
            drained_after = time.monotonic() - began
    flooding.join(timeout=10)
    print(
        f"\nflood: {FLOOD:,} malformed messages on {queues.CALLS}, {len(latencies)} calls "
        f"completed before all were in {DEAD_LETTER_QUEUE} ({drained_after} s); call latency "
        f"max {max(latencies):.3f} s, median {sorted(latencies)[len(latencies) // 2]:.3f} s"
    )

    rejected = worker.log().count("into batchapp.dead:") - logged
    assert drained_after is not None, (
        f"{dead_letters() - start} of {FLOOD} dead-lettered, {rejected} rejected"
    )
    assert len(latencies) >= 3
    assert dead_letters() - start == FLOOD
    assert rejected == FLOOD
    assert worker.popen.poll() is None


def test_a_message_rejected_on_a_new_broker_lands_in_the_dead_letter_queue(
    stack: Stack,
) -> None:
    """Nobody ran `batchapp dead-letters` on this vhost: the worker declared batchapp.dead."""
    with rabbitmq_vhost("batchapp-dead") as broker_url:
        process = processes.worker(
            {**stack.env, "BATCHAPP_BROKER_URL": broker_url},
            RUN_DATA_DIR / "logs" / f"availability-dead-{uuid.uuid4().hex[:6]}.log",
        )
        stack.started.append(process)
        process.wait_ready()
        with Connection(broker_url) as connection:
            publish(
                Producer(connection.default_channel),
                queues.CALLS,
                (task_headers(), b"not JSON", "application/json", "utf-8"),
            )
            deadline = time.monotonic() + RESULT_TIMEOUT
            while (
                queued := connection.default_channel.queue_declare(DEAD_LETTER_QUEUE, passive=True)[
                    1
                ]
            ) < 1:
                assert time.monotonic() < deadline, process.tail()
                time.sleep(0.05)
        process.stop()
    assert queued == 1


def test_a_dead_letter_keeps_the_message_and_says_why(worker: processes.CeleryProcess) -> None:
    headers = task_headers("celery.group")
    with app.connection_for_write() as connection:
        dead_letter_queue_of(app)(connection.default_channel).purge()
        publish(
            Producer(connection.default_channel),
            queues.CHUNKS,
            (headers, task_body(), "application/json", "utf-8"),
        )
        deadline = time.monotonic() + RESULT_TIMEOUT
        message = None
        while message is None and time.monotonic() < deadline:
            message = dead_letter_queue_of(app)(connection.default_channel).get(no_ack=True)
            time.sleep(0.05)
    assert message is not None
    assert json.loads(message.body) == json.loads(task_body())
    assert message.headers["task"] == "celery.group"
    # RabbitMQ's record of the rejection; the guard's reason is in the worker's log, by id.
    [death] = message.headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("rejected", queues.CHUNKS, 1)
    assert (
        f"Rejected message (task 'celery.group', id {headers['id']!r}) from queue "
        f"{queues.CHUNKS!r} into batchapp.dead: task 'celery.group' is not served here"
    ) in worker.log()


def test_an_operator_reads_and_purges_the_dead_letters(worker: processes.CeleryProcess) -> None:
    start = dead_letters()
    with app.connection_for_write() as connection:
        publish(
            Producer(connection.default_channel),
            queues.CALLS,
            (task_headers("celery.chord_unlock"), task_body(), "application/json", "utf-8"),
        )
    assert wait_for_dead_letters(start + 1) == start + 1

    listed = run_cli("dead-letters", "--limit", "1000", "--json")
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    table = run_cli("dead-letters", "--limit", "1000")
    still_queued = dead_letters()
    purged = run_cli("dead-letters", "--purge")

    assert shown["count"] == start + 1 == len(shown["messages"])
    assert {
        "task": "celery.chord_unlock",
        "queue": queues.CALLS,
        "reason": "rejected",
        "count": 1,
    }.items() <= shown["messages"][-1].items()
    assert "rejected: refused by a worker; the worker's log line with this id says why" in (
        table.stdout
    )
    assert still_queued == start + 1, "listing took messages off the queue"
    assert purged.stdout.strip() == f"purged {start + 1} dead letter(s)"
    assert run_cli("dead-letters").stdout.startswith("0 dead letter(s) in batchapp.dead")


def test_a_retry_within_the_cap_still_runs(worker: processes.CeleryProcess) -> None:
    result = calculate_sum.apply_async((10,), retries=guard.MAX_RETRIES)
    assert result.get(timeout=RESULT_TIMEOUT) == 55
    assert run_chunk.max_retries <= guard.MAX_RETRIES


# --- a broker that takes messages but stops answering --------------------------------------

AMQP_PROTOCOL_HEADER = 8
BASIC_PUBLISH = (60).to_bytes(2, "big") + (40).to_bytes(2, "big")


class ReplyDroppingProxy:
    """A TCP proxy to RabbitMQ that forwards both ways until a client sends its first
    basic.publish; from then on it still forwards the client's frames but drops every reply."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropping = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        pending = b""
        skip = AMQP_PROTOCOL_HEADER
        while data := _recv(client):
            pending += data
            if skip:
                taken = min(skip, len(pending))
                pending, skip = pending[taken:], skip - taken
            # Frames: type (1 byte), channel (2), size (4), payload, end marker (1).
            while len(pending) >= 7 and len(pending) >= 8 + int.from_bytes(pending[3:7], "big"):
                size = int.from_bytes(pending[3:7], "big")
                if pending[0] == 1 and pending[7:11] == BASIC_PUBLISH:
                    self.dropping.set()
                pending = pending[8 + size :]
            with contextlib.suppress(OSError):
                upstream.sendall(data)

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
        while data := _recv(upstream):
            if not self.dropping.is_set():
                with contextlib.suppress(OSError):
                    client.sendall(data)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.fixture
def proxy() -> Iterator[ReplyDroppingProxy]:
    broker = urlsplit(os.environ["BATCHAPP_BROKER_URL"])
    proxy = ReplyDroppingProxy((broker.hostname or "127.0.0.1", broker.port or 5672))
    yield proxy
    proxy.close()


def test_submit_ends_in_one_error_line_when_the_broker_stops_answering(
    stack: Stack, proxy: ReplyDroppingProxy
) -> None:
    broker = urlsplit(os.environ["BATCHAPP_BROKER_URL"])
    proxied = urlunsplit(broker._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}"))
    env = {**stack.env, "BATCHAPP_BROKER_URL": proxied, "BATCHAPP_BROKER_TIMEOUT": "2"}

    started = time.monotonic()
    result = run_cli("submit", "parallel_sum", "n=100", "chunk_size=10", env=env)
    elapsed = time.monotonic() - started

    print(f"\nlost replies: submit ended in {elapsed:.1f} s: {result.stderr.strip()}")
    assert proxy.dropping.is_set(), "the publishes never reached the proxy"
    assert result.returncode == 1
    assert result.stderr.startswith("Error: RabbitMQ did not answer within 2 s")
    assert result.stderr.count("\n") == 1
    assert elapsed < 20
