"""Queues by kind of work: calls and beat ticks are never stuck behind a job's chunk backlog."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.exceptions import QueueNotFound

from batchapp import ledger, queues, routing
from batchapp.celery import app
from batchapp.jobs import JobContext
from batchapp.processes import CeleryProcess
from batchapp.sales_csv import write_sample
from batchapp.settings import load
from batchapp.tasks import calculate_sum, publish_chunks
from tests.conftest import RESULT_TIMEOUT, RUN_DATA_DIR, Stack

BIG_IMPORT_ROWS = 300_000
CHUNK_ROWS = 10_000
CALL_BOUND_S = 2.0
CHUNK_SUCCEEDED = re.compile(r"Task batchapp\.tasks\.run_chunk\[[^\]]+\] succeeded in ([0-9.]+)s")


def route(task_name: str, **options: Any) -> str:
    """The queue Celery would publish ``task_name`` to."""
    queue = app.amqp.router.route(options, task_name)["queue"]
    return str(queue.name)


@pytest.mark.parametrize(
    ("task_name", "queue"),
    [
        ("batchapp.tasks.calculate_sum", queues.CALLS),
        ("batchapp.tasks.run_chunk", queues.CHUNKS),
        ("batchapp.tasks.run_periodic", queues.PERIODIC),
        ("celery.backend_cleanup", queues.PERIODIC),
        # An unknown or future task goes where a default worker reads, not to a dead queue.
        ("someone.elses.task", queues.CALLS),
    ],
)
def test_each_task_is_routed_to_its_kind_of_queue(task_name: str, queue: str) -> None:
    assert route(task_name) == queue


def test_every_beat_entry_ticks_on_the_periodic_queue() -> None:
    schedule = app.conf.beat_schedule

    assert schedule
    for name, entry in schedule.items():
        assert route(entry["task"], **entry["options"]) == queues.PERIODIC, name


def test_a_chunk_can_be_sent_to_the_periodic_queue_explicitly() -> None:
    assert route("batchapp.tasks.run_chunk", queue=queues.PERIODIC) == queues.PERIODIC


def test_a_queue_nobody_declared_is_refused_at_the_caller() -> None:
    with pytest.raises(QueueNotFound, match="'celery' missing from task_queues"):
        calculate_sum.apply_async((1,), queue="celery")


def test_queues_are_quorum_by_default_with_the_broker_delivery_limit() -> None:
    settings = load({"BATCHAPP_MAX_DELIVERIES": "4"})
    declared = routing.task_queues(settings.queue_type, settings.max_deliveries)

    assert [queue.name for queue in declared] == list(queues.ALL)
    for queue in declared:
        assert queue.durable
        assert queue.exchange.type == "topic"
        assert queue.queue_arguments == {"x-queue-type": "quorum", "x-delivery-limit": 4}


def test_classic_queues_have_no_delivery_limit() -> None:
    settings = load({"BATCHAPP_QUEUE_TYPE": "classic"})

    for queue in routing.task_queues(settings.queue_type, settings.max_deliveries):
        assert queue.queue_arguments == {"x-queue-type": "classic"}


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[CeleryProcess]:
    """ONE worker as `celery -A batchapp worker` starts it: no -Q, concurrency 2."""
    yield stack.worker("w1", concurrency=2)


@pytest.fixture(scope="module")
def big_csv() -> str:
    name = "queues-big.csv"
    write_sample(RUN_DATA_DIR / name, BIG_IMPORT_ROWS, seed=11)
    return name


def start_import(ctx: JobContext, path: str) -> ledger.JobView:
    return ledger.submit(
        ctx, "import_csv", {"path": path, "chunk_rows": CHUNK_ROWS}, publish_chunks
    )


def test_default_worker_consumes_every_queue_with_per_consumer_prefetch(
    worker: CeleryProcess,
) -> None:
    active = app.control.inspect(timeout=5).active_queues() or {}

    assert len(active) == 1, active
    assert {queue["name"] for queue in next(iter(active.values()))} == set(queues.ALL)
    assert "Global QoS is disabled" in worker.log()


def test_calls_wait_at_most_for_one_chunk_during_a_big_import(
    stack: Stack, worker: CeleryProcess, big_csv: str
) -> None:
    ctx = stack.ctx
    log_start = len(worker.log())
    job = start_import(ctx, big_csv)
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
    assert done.status == "succeeded" and done.chunks_done == BIG_IMPORT_ROWS // CHUNK_ROWS
    assert len(latencies) >= 10, "the import ended before enough calls were measured"
    # Waiting for one running chunk: a call that arrives at a random moment waits for about
    # half of it; the slack covers the call's own round trip on a busy machine.
    assert median_call <= median_chunk + 0.05, (median_call, median_chunk)


def count_ticks(beat: CeleryProcess, worker_log: str) -> dict[str, tuple[int, int]]:
    """For each ticking task: (ticks beat sent, ticks the worker ran)."""
    counts = {}
    for entry, task in [
        ("calculate-sum", "batchapp.tasks.calculate_sum"),
        ("sales-report", "batchapp.tasks.run_periodic"),
    ]:
        sent = beat.log().count(f"Sending due task {entry} ({task})")
        ran = len(re.findall(rf"Task {re.escape(task)}\[[^\]]+\] succeeded", worker_log))
        counts[entry] = (sent, ran)
    return counts


def test_every_tick_runs_during_an_import_that_outlasts_several_intervals(
    stack: Stack, worker: CeleryProcess, big_csv: str
) -> None:
    ctx = stack.ctx
    log_start = len(worker.log())
    # Each tick expires after one interval: a tick stuck behind the chunks would be dropped.
    beat = stack.beat(BATCHAPP_BEAT_INTERVAL="0.5")
    job = start_import(ctx, big_csv)
    done = ledger.wait(ctx, job.id, timeout=120)
    beat.stop()
    during = count_ticks(beat, worker.log()[log_start:])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = count_ticks(beat, worker.log()[log_start:])
        if all(sent == ran for sent, ran in counts.values()):
            break
        time.sleep(0.1)
    print(f"\nticks (sent, ran) over an import of {BIG_IMPORT_ROWS:,} rows: {counts}")

    assert done.status == "succeeded"
    assert all(sent >= 3 for sent, _ in during.values()), during
    assert all(sent == ran for sent, ran in counts.values()), counts
