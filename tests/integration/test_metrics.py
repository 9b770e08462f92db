"""/metrics against RabbitMQ and a real worker, on a SQLite and on a PostgreSQL ledger: what it
says of the queues is what RabbitMQ says, and a broker that is not there is down, not a hang."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from kombu import Producer
from prometheus_client.parser import text_string_to_metric_families

from batchapp import ledger
from batchapp.broker import depths, queues, routing
from batchapp.celery import app
from batchapp.tasks import publish_chunks
from batchapp.web.metrics import render_metrics
from tests.integration.conftest import RUN_DATA_DIR, Stack, _stack
from tests.support import wait_until

WAIT = 60.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def metrics_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A worker for calls and ticks only: chunks wait in their queue until a test starts one
    for them."""
    if request.param == "sqlite":
        url = f"sqlite:///{RUN_DATA_DIR / 'metrics.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    for stack in _stack(f"metrics-{request.param}", url):
        stack.worker("calls", concurrency=1, extra=["-Q", f"{queues.CALLS},{queues.PERIODIC}"])
        yield stack


def in_rabbitmq() -> dict[str, tuple[int, int]]:
    """Each queue of the run's vhost as RabbitMQ lists it: (ready messages, consumers)."""
    vhost = urlsplit(os.environ["BATCHAPP_BROKER_URL"]).path[1:]
    columns = ("name", "messages_ready", "consumers", "--formatter", "json")
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, *columns],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {q["name"]: (q["messages_ready"], q["consumers"]) for q in json.loads(listed.stdout)}


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = render_metrics(stack.ctx)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def queue_figures(found: dict[tuple[str, Any], float]) -> dict[str, tuple[float, float]]:
    return {
        name: (
            found[("batchapp_queue_messages_ready", (("queue", name),))],
            found[("batchapp_queue_consumers", (("queue", name),))],
        )
        for name in queues.ALL
    }


def publish_not_json() -> None:
    """A message the worker's guard refuses into batchapp.dead."""
    with app.connection_for_write() as connection:
        Producer(connection.default_channel).publish(
            b"{this is not json",
            exchange=routing.EXCHANGE,
            routing_key=queues.CALLS,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "batchapp.tasks.calculate_sum", "id": str(uuid.uuid4())},
        )


def test_queue_depths_and_dead_letters_are_rabbitmqs(metrics_stack: Stack) -> None:
    ctx = metrics_stack.ctx
    view = ledger.submit(ctx, "parallel_sum", {"n": 700, "chunk_size": 100}, publish_chunks)
    dead_before = in_rabbitmq().get(queues.DEAD, (0, 0))[0]
    publish_not_json()
    wait_until(
        lambda: in_rabbitmq()[queues.DEAD][0] == dead_before + 1, "a dead letter", timeout=WAIT
    )
    wait_until(lambda: in_rabbitmq()[queues.CHUNKS][0] == 7, "7 chunks queued", timeout=WAIT)
    listed = in_rabbitmq()
    found = scrape(metrics_stack)

    assert found[("batchapp_broker_up", ())] == 1
    assert queue_figures(found) == {name: listed[name] for name in queues.ALL}
    assert listed[queues.CHUNKS] == (7, 0)
    assert found[("batchapp_dead_letters", ())] == listed[queues.DEAD][0] == dead_before + 1
    running = (("job_name", "parallel_sum"), ("status", "pending"))
    assert found[("batchapp_running_chunks", running)] == 7
    assert view.id not in str(found)


def test_a_job_run_by_a_chunk_worker_leaves_the_queue_and_counts_as_succeeded(
    metrics_stack: Stack,
) -> None:
    ctx = metrics_stack.ctx
    view = ledger.submit(ctx, "parallel_sum", {"n": 300, "chunk_size": 100}, publish_chunks)
    metrics_stack.worker("chunks", concurrency=1, extra=["-Q", queues.CHUNKS])
    ledger.wait(ctx, view.id, timeout=WAIT)
    wait_until(lambda: in_rabbitmq()[queues.CHUNKS][0] == 0, "chunks drained", timeout=WAIT)
    found = scrape(metrics_stack)
    succeeded = (("job_name", "parallel_sum"), ("status", "succeeded"))

    assert queue_figures(found)[queues.CHUNKS] == in_rabbitmq()[queues.CHUNKS] == (0, 1)
    assert found[("batchapp_jobs", succeeded)] >= 1
    assert 0 <= found[("batchapp_job_last_success_age_seconds", (succeeded[0],))] < WAIT


def test_a_broker_that_is_not_there_is_down_within_the_timeout(metrics_stack: Stack) -> None:
    nowhere = Celery(broker="amqp://guest:guest@127.0.0.1:1//")
    started = time.monotonic()
    body, _ = render_metrics(
        metrics_stack.ctx,
        read_broker=lambda timeout: depths.queue_depths(nowhere, queues.ALL, timeout),
    )
    took = time.monotonic() - started

    assert b"batchapp_broker_up 0.0" in body
    assert b"batchapp_jobs{" in body
    assert took < 10, took


def test_a_queue_the_broker_lacks_is_left_out_and_the_others_still_read(
    metrics_stack: Stack,
) -> None:
    found = depths.queue_depths(app, ["batchapp.no-such-queue", queues.CALLS, queues.DEAD], 10.0)

    assert set(found) == {queues.CALLS, queues.DEAD}
    assert found[queues.CALLS].consumers == in_rabbitmq()[queues.CALLS][1]
