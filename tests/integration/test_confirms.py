"""Publisher confirms read as they come: a burst of delay() does not wait for each, yet a
task RabbitMQ did not take is an error on the next publish, on its result, or at exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from kombu import Queue
from kombu.exceptions import OperationalError

from batchapp.broker import confirms
from batchapp.celery import app
from batchapp.cli.processes import CeleryProcess
from batchapp.sums import sum_to
from batchapp.tasks import calculate_sum
from tests.integration.conftest import RESULT_TIMEOUT, Stack, refusing_queue

REFUSED = r"RabbitMQ refused it \(nack\)"


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[CeleryProcess]:
    yield stack.worker()


@pytest.fixture
def full_queue() -> Iterator[Queue]:
    """A queue RabbitMQ refuses every message for (with a nack), as a quorum queue does while
    it elects a leader. Refusals no test read are taken out of the caller's window after."""
    yield refusing_queue()
    window = confirms.pending_window(app)
    if window is not None:
        assert all("refused it (nack)" in line for line in window.flush())


def test_a_burst_of_delay_calls_is_confirmed_and_every_result_arrives(
    worker: CeleryProcess,
) -> None:
    results = [calculate_sum.delay(i) for i in range(300)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [sum_to(i) for i in range(300)]
    window = confirms.pending_window(app)
    assert window is not None and window.pending() == 0


def test_a_refused_task_is_an_error_on_its_result(full_queue: Queue) -> None:
    result = calculate_sum.apply_async((1,), queue=full_queue)
    with pytest.raises(OperationalError, match=REFUSED):
        result.get(timeout=RESULT_TIMEOUT)
    # And on every later touch of the same result, not only the first.
    with pytest.raises(OperationalError, match=REFUSED):
        _ = result.state


def test_a_refused_task_is_an_error_on_the_next_publish(full_queue: Queue) -> None:
    refused = calculate_sum.apply_async((1,), queue=full_queue)
    deadline = time.monotonic() + RESULT_TIMEOUT
    # Each publish reads the confirms that have come without waiting: the nack is raised by
    # the first publish after it arrived, and that publish's own task is not sent.
    with pytest.raises(OperationalError, match=rf"earlier task {refused.id} was not queued"):
        while time.monotonic() < deadline:
            calculate_sum.apply_async((2,), queue=full_queue)
    with pytest.raises(OperationalError, match=REFUSED):
        refused.get(timeout=RESULT_TIMEOUT)


def test_a_refused_task_nobody_waited_for_is_reported_at_exit(full_queue: Queue) -> None:
    script = (
        "from kombu import Exchange, Queue\n"
        "from batchapp.tasks import calculate_sum\n"
        f"queue = Queue({full_queue.name!r}, Exchange({full_queue.name!r}, 'direct', "
        f"auto_delete=True), routing_key={full_queue.name!r}, auto_delete=True, "
        "queue_arguments={'x-max-length': 0, 'x-overflow': 'reject-publish'})\n"
        "print(calculate_sum.apply_async((1,), queue=queue).id)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    task_id = done.stdout.strip()
    assert f"batchapp: task {task_id} was not queued" in done.stderr
    assert "refused it (nack)" in done.stderr


def test_tasks_out_when_the_connection_drops_are_sent_again(worker: CeleryProcess) -> None:
    first = calculate_sum.delay(10)
    window = confirms.pending_window(app)
    assert window is not None
    # The broker's confirm may be on its way or lost with the socket: either way it is sent.
    window._connection.connection.sock.close()
    later = calculate_sum.delay(20)
    assert first.get(timeout=RESULT_TIMEOUT) == 55
    assert later.get(timeout=RESULT_TIMEOUT) == 210
