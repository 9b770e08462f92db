"""Queues by kind of work: calls and beat ticks are never stuck behind a job's chunk backlog.

How tasks are routed, how queues are declared and how a failover list is read are tested in
tests/unit/test_queues.py; here a real broker and workers hold them to it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from amqp import Message as amqp_message
from amqp.exceptions import ChannelError
from celery.exceptions import QueueNotFound
from kombu.connection import Connection

from batchapp import ledger
from batchapp.broker import queues, routing
from batchapp.celery import app
from batchapp.cli import processes
from batchapp.cli.processes import CeleryProcess
from batchapp.jobs import JobContext
from batchapp.jobs.sales_csv import write_sample
from batchapp.settings import load
from batchapp.tasks import calculate_sum, publish_chunks
from tests.integration.conftest import RESULT_TIMEOUT, RUN_DATA_DIR, Stack, _psql
from tests.support import rabbitmq_vhost, rabbitmqctl, run_cli

BIG_IMPORT_ROWS = 200_000
CHUNK_ROWS = 10_000
CALL_BOUND_S = 2.0
TICKS_IMPORT_ROWS = 600_000
TICKS_CHUNK_ROWS = 5_000
TICKS_INTERVAL_S = 2
CHUNK_SUCCEEDED = re.compile(r"Task batchapp\.tasks\.run_chunk\[[^\]]+\] succeeded in ([0-9.]+)s")


def test_a_queue_nobody_declared_is_refused_at_the_caller() -> None:
    with pytest.raises(QueueNotFound, match="'celery' missing from task_queues"):
        calculate_sum.apply_async((1,), queue="celery")


def test_a_message_past_the_delivery_limit_is_dead_lettered() -> None:
    """A message returned more often than x-delivery-limit (a poison chunk the ledger could not
    stop) goes to batchapp.dead, which declaring the task queue declared."""
    limit = load().max_deliveries
    with rabbitmq_vhost("batchapp-limit") as broker_url, Connection(broker_url) as connection:
        channel = connection.default_channel
        queue = app.amqp.queues[queues.CHUNKS](channel)
        queue.declare()
        channel.basic_publish(amqp_message(b"poison", delivery_mode=2), "", queues.CHUNKS)
        deliveries = 0
        deadline = time.monotonic() + 30
        while (message := queue.get(no_ack=False)) is not None or deliveries <= limit:
            assert time.monotonic() < deadline, f"{deliveries} deliveries"
            if message is not None:
                deliveries += 1
                message.reject(requeue=True)
        dead = routing.dead_letter_queue(load().queue_type)(channel)
        while (letter := dead.get(no_ack=True)) is None:
            assert time.monotonic() < deadline, "not dead-lettered"
            time.sleep(0.05)

    assert deliveries == limit + 1
    [death] = letter.headers["x-death"]
    assert (death["reason"], death["queue"]) == ("delivery_limit", queues.CHUNKS)


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[CeleryProcess]:
    """ONE worker as `celery -A batchapp worker` starts it: no -Q, concurrency 2."""
    yield stack.worker("w1", concurrency=2)


def big_csv(seed: int, rows: int = BIG_IMPORT_ROWS) -> str:
    """A sales CSV whose order ids (``S<seed>-<row>``) are new: a re-import is much faster."""
    name = f"queues-{seed}.csv"
    write_sample(RUN_DATA_DIR / name, rows, seed=seed)
    return name


def start_import(ctx: JobContext, path: str, chunk_rows: int = CHUNK_ROWS) -> ledger.JobView:
    return ledger.submit(
        ctx, "import_csv", {"path": path, "chunk_rows": chunk_rows}, publish_chunks
    )


def test_default_worker_consumes_every_queue_with_per_consumer_prefetch(
    worker: CeleryProcess,
) -> None:
    active = app.control.inspect([f"w1@{socket.gethostname()}"], timeout=10).active_queues() or {}

    assert len(active) == 1, active
    assert {queue["name"] for queue in next(iter(active.values()))} == set(queues.ALL)
    assert "Global QoS is disabled" in worker.log()


def test_calls_wait_at_most_for_one_chunk_during_a_big_import(
    stack: Stack, worker: CeleryProcess
) -> None:
    ctx = stack.ctx
    path = big_csv(seed=41)
    log_start = len(worker.log())
    job = start_import(ctx, path)
    latencies: list[float] = []
    while not ledger.get(ctx, job.id).finished:
        started = time.monotonic()
        assert calculate_sum.delay(100).get(timeout=RESULT_TIMEOUT) == 5050
        latencies.append(time.monotonic() - started)
    done = ledger.get(ctx, job.id)
    chunk_times = [float(s) for s in CHUNK_SUCCEEDED.findall(worker.log()[log_start:])]
    median_call, median_chunk = statistics.median(latencies), statistics.median(chunk_times)
    print(
        f"\n{len(latencies)} calls during an import of {BIG_IMPORT_ROWS:,} rows "
        f"({done.chunks_total} chunks of {CHUNK_ROWS:,}, median chunk {median_chunk * 1000:.0f} ms,"
        f" {(done.updated_at - done.created_at).total_seconds():.1f} s): "
        f"median {median_call * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )

    assert max(latencies) < CALL_BOUND_S, sorted(latencies)[-5:]
    # Waiting for one running chunk: a call that arrives at a random moment waits for about
    # half of it; the slack covers the call's own round trip on a busy machine.
    assert median_call <= median_chunk + 0.05, (median_call, median_chunk)
    assert done.status == "succeeded" and done.chunks_done == BIG_IMPORT_ROWS // CHUNK_ROWS
    assert len(latencies) >= 10, "the import ended before enough calls were measured"


def count_ticks(beat: CeleryProcess, worker_log: str) -> dict[str, tuple[int, int]]:
    """For each ticking task: (ticks beat sent, ticks the worker ran)."""
    counts = {}
    # run_periodic serves the hourly cleanup too: a report's run returns "report <job id>: ...".
    for entry, task, returned in [
        ("calculate-sum", "batchapp.tasks.calculate_sum", ""),
        ("sales-report", "batchapp.tasks.run_periodic", "'report "),
    ]:
        sent = beat.log().count(f"Sending due task {entry} ({task})")
        succeeded = rf"Task {re.escape(task)}\[[^\]]+\] succeeded in [0-9.]+s: {returned}"
        counts[entry] = (sent, len(re.findall(succeeded, worker_log)))
    return counts


def test_every_tick_runs_during_an_import_that_outlasts_several_intervals(
    stack: Stack, worker: CeleryProcess
) -> None:
    ctx = stack.ctx
    path = big_csv(seed=42, rows=TICKS_IMPORT_ROWS)
    log_start = len(worker.log())
    # Each tick expires after one interval: a tick stuck behind the backlog would be dropped,
    # one that waits for a running chunk (up to ~1.5 s on this shared machine) is not.
    beat = stack.beat(BATCHAPP_BEAT_INTERVAL=str(TICKS_INTERVAL_S))
    # The backlog must outlast several intervals however fast this machine is today: import
    # again (a re-import parses every line too) until beat has sent three ticks of each entry.
    finished: list[ledger.JobView] = []
    deadline = time.monotonic() + 120
    while True:
        job = start_import(ctx, path, chunk_rows=TICKS_CHUNK_ROWS)
        finished.append(ledger.wait(ctx, job.id, timeout=120))
        during = count_ticks(beat, worker.log()[log_start:])
        if all(sent >= 3 for sent, _ in during.values()) or time.monotonic() > deadline:
            break
    beat.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = count_ticks(beat, worker.log()[log_start:])
        if all(sent == ran for sent, ran in counts.values()):
            break
        time.sleep(0.1)
    print(
        f"\nticks (sent, ran) over {len(finished)} import(s) of {TICKS_IMPORT_ROWS:,} rows: "
        f"{counts}"
    )

    assert all(done.status == "succeeded" for done in finished)
    assert all(sent >= 3 for sent, _ in during.values()), during
    assert all(sent == ran for sent, ran in counts.values()), counts


# -- Quorum queues (the default, so the whole suite runs on them): what differs from classic --


COLUMNS = ("name", "type", "arguments", "messages", "--formatter", "json")


def broker_queues(broker_url: str) -> dict[str, dict[str, Any]]:
    """The queues RabbitMQ has in ``broker_url``'s vhost: name -> type, x-arguments, messages."""
    listed = rabbitmqctl("list_queues", "-p", urlsplit(broker_url).path[1:], *COLUMNS)
    return {
        queue["name"]: {
            "type": queue["type"],
            "arguments": {key: value for key, _, value in queue["arguments"]},
            "messages": queue["messages"],
        }
        for queue in json.loads(listed)
    }


def test_broker_holds_quorum_queues_with_the_ledgers_delivery_limit(worker: CeleryProcess) -> None:
    declared = broker_queues(os.environ["BATCHAPP_BROKER_URL"])

    for name in queues.ALL:
        assert declared[name]["type"] == "quorum", name
        assert declared[name]["arguments"]["x-delivery-limit"] == load().max_deliveries
    # Native delayed delivery: 28 delay queues, dead-lettered at least once, not at most once.
    delays = [declared[f"celery_delayed_{level}"] for level in range(28)]
    assert all(queue["type"] == "quorum" for queue in delays)
    assert all(q["arguments"]["x-dead-letter-strategy"] == "at-least-once" for q in delays)


def test_a_countdown_waits_on_the_broker_not_in_a_worker(worker: CeleryProcess) -> None:
    started = time.monotonic()
    result = calculate_sum.apply_async((7,), countdown=2)
    scheduled = app.control.inspect(timeout=1).scheduled() or {}
    waiting = not result.ready()

    assert waiting and scheduled and not any(scheduled.values()), scheduled
    assert result.get(timeout=RESULT_TIMEOUT) == 28
    assert time.monotonic() - started >= 1.5


def test_a_countdown_under_a_second_runs(worker: CeleryProcess) -> None:
    assert calculate_sum.apply_async((3,), countdown=0.4).get(timeout=RESULT_TIMEOUT) == 6
    eta = app.now() + timedelta(seconds=0.3)
    assert calculate_sum.apply_async((4,), eta=eta).get(timeout=RESULT_TIMEOUT) == 10


def test_remote_control_answers_on_quorum_queues(worker: CeleryProcess) -> None:
    assert ping("w1") == [{f"w1@{socket.gethostname()}": {"ok": "pong"}}]


def test_a_countdown_sent_before_any_worker_started_reaches_its_queue() -> None:
    with rabbitmq_vhost("batchapp-queues") as broker_url:
        env = {**os.environ, "BATCHAPP_BROKER_URL": broker_url}
        sent = run_python(env, "calculate_sum.apply_async((5,), countdown=1)")
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 30
        while queued(broker_url, queues.CALLS) != 1:
            assert time.monotonic() < deadline, broker_queues(broker_url)
            time.sleep(0.1)


def ping(name: str) -> list[dict[str, Any]]:
    """Remote control's ping to one worker of the stack; returns as soon as it answers."""
    return list(app.control.ping([f"{name}@{socket.gethostname()}"], timeout=10))


def queued(broker_url: str, name: str) -> int:
    """Messages ready in queue ``name`` (0 if it does not exist yet)."""
    with Connection(broker_url) as connection:
        try:
            return int(connection.default_channel.queue_declare(name, passive=True)[1])
        except ChannelError:
            return 0


def run_python(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    """A caller of its own (its own settings, so its own broker vhost and queue type)."""
    return subprocess.run(
        [sys.executable, "-c", f"from batchapp.tasks import calculate_sum\n{code}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def own_vhost(
    stack: Stack, name: str, **env: str
) -> Iterator[tuple[dict[str, str], CeleryProcess]]:
    """A worker on a vhost of its own ('{vhost}' in a value is its URL), and its callers' env."""
    with rabbitmq_vhost(f"batchapp-{name}") as broker_url:
        env = {"BATCHAPP_BROKER_URL": broker_url, **env}
        env = {key: value.replace("{vhost}", broker_url) for key, value in env.items()}
        worker = stack.worker(name, **env)
        try:
            yield {**stack.env, **env}, worker
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def classic_failover(stack: Stack) -> Iterator[tuple[dict[str, str], CeleryProcess]]:
    """A vhost of classic queues, reached through a failover list whose first broker is down."""
    with own_vhost(
        stack,
        "classic",
        BATCHAPP_BROKER_URL="amqp://alice:s3cret-one@127.0.0.1:1//;{vhost}",
        BATCHAPP_QUEUE_TYPE="classic",
    ) as env_and_worker:
        yield env_and_worker


def test_worker_fails_over_to_the_next_broker_and_logs_no_password(
    classic_failover: tuple[dict[str, str], CeleryProcess],
) -> None:
    _, worker = classic_failover

    assert "Cannot connect to amqp://alice:**@127.0.0.1:1//" in worker.log()
    assert "Connected to amqp://guest:**@127.0.0.1:5672/batchapp-classic-" in worker.log()
    assert "s3cret" not in worker.log()


def test_classic_queues_serve_calls_countdowns_and_chunks(
    classic_failover: tuple[dict[str, str], CeleryProcess],
) -> None:
    env, worker = classic_failover
    done = run_python(
        env,
        "print(calculate_sum.delay(5).get(timeout=30),"
        " calculate_sum.apply_async((6,), countdown=0.5).get(timeout=30))",
    )
    job = run_cli("submit", "parallel_sum", "n=1000", "chunk_size=100", "--wait", env=env)

    assert done.stdout.split() == ["15", "21"], done.stderr
    assert "result   500500" in job.stdout, job.stdout + job.stderr
    assert "Global QoS is disabled" not in worker.log()


ONE_CHUNK = ("n=1000", "chunk_size=1000", "--wait", "--json")


@pytest.fixture
def worker_role(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL role for the worker alone, so its logins can be refused for a while."""
    role = f"batchapp_worker_{uuid.uuid4().hex[:8]}"
    _psql(f'CREATE ROLE "{role}" LOGIN SUPERUSER')
    try:
        yield role
    finally:
        _psql(f'DROP ROLE IF EXISTS "{role}"')


def test_a_chunk_retried_after_a_database_outage_comes_back_through_the_broker(
    stack: Stack, postgres_url: str, worker_role: str
) -> None:
    worker_url = postgres_url.replace("//postgres@", f"//{worker_role}@")
    with own_vhost(stack, "retry", BATCHAPP_DATABASE_URL=worker_url) as (env, worker):
        _psql(f'ALTER ROLE "{worker_role}" NOLOGIN')
        caller = subprocess.Popen(
            [str(Path(sys.executable).parent / "batchapp"), "submit", "parallel_sum", *ONE_CHUNK],
            env={**env, "BATCHAPP_DATABASE_URL": postgres_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Until a retry waits on the broker (a countdown of 1 s or more), logins fail.
            deadline = time.monotonic() + 60
            while not re.search(r"retry: Retry in [1-9]\d*s: OperationalError", worker.log()):
                assert time.monotonic() < deadline, worker.tail()
                time.sleep(0.1)
            _psql(f'ALTER ROLE "{worker_role}" LOGIN')
            out, err = caller.communicate(timeout=60)
        finally:
            caller.kill()
    job = json.loads(out)

    assert (job["status"], job["result"]) == ("succeeded", 500500), err


def test_a_worker_whose_queue_type_differs_from_the_brokers_stops_and_says_why(
    stack: Stack,
) -> None:
    with app.connection_for_write() as connection:
        for queue in app.amqp.queues.values():
            queue(connection.default_channel).declare()  # as quorum queues, the default
    log = RUN_DATA_DIR / "logs" / "queues-wrong-type.log"
    worker = processes.worker({**stack.env, "BATCHAPP_QUEUE_TYPE": "classic"}, log)
    try:
        exit_status = worker.popen.wait(timeout=60)
    finally:
        worker.stop()

    assert exit_status != 0
    # The first argument RabbitMQ finds different (the type, or what only quorum queues have).
    assert re.search(r"inequivalent arg 'x-[a-z-]+' for queue 'batchapp\.", worker.log())
