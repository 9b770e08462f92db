"""calculate_sum through a real worker process on the run's own RabbitMQ vhost."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu import Queue

from batchapp.broker import routing
from batchapp.cli.processes import CeleryProcess
from batchapp.tasks import calculate_sum
from tests.integration.conftest import RESULT_TIMEOUT, Stack


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[CeleryProcess]:
    yield stack.worker()


def celery_cli(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "batchapp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_delay_get_returns_5050(worker: CeleryProcess) -> None:
    assert calculate_sum.delay(100).get(timeout=RESULT_TIMEOUT) == 5050


@pytest.mark.parametrize(
    ("argument", "error", "message"),
    [
        ("100", TypeError, "calculate_sum: n must be an int, got str '100'"),
        (None, TypeError, "calculate_sum: n must be an int, got NoneType None"),
        (True, TypeError, "calculate_sum: n must be an int, got bool True"),
        (10**19, ValueError, "calculate_sum: n must be <= 1,000,000,000,000,000,000"),
    ],
)
def test_bad_input_comes_back_as_the_error_and_the_worker_keeps_serving(
    worker: CeleryProcess, argument: object, error: type[Exception], message: str
) -> None:
    result = calculate_sum.delay(argument)
    with pytest.raises(error) as raised:
        result.get(timeout=RESULT_TIMEOUT)

    assert message in str(raised.value)
    assert result.state == "FAILURE"
    assert calculate_sum.delay(7).get(timeout=RESULT_TIMEOUT) == 28


def test_celery_call_then_celery_result_prints_5050_from_another_folder(
    worker: CeleryProcess, tmp_path: Path
) -> None:
    task_id = celery_cli("call", "batchapp.tasks.calculate_sum", "--args", "[100]").strip()
    calculate_sum.AsyncResult(task_id).get(timeout=RESULT_TIMEOUT)

    assert celery_cli("result", task_id, cwd=tmp_path).strip() == "5050"


def test_inspect_registered_lists_the_tasks(worker: CeleryProcess) -> None:
    output = celery_cli("inspect", "registered", "--timeout", "5")

    for name in ("calculate_sum", "run_chunk", "run_periodic"):
        assert f"batchapp.tasks.{name}" in output


def test_get_with_timeout_raises_when_no_worker_answers(stack: Stack) -> None:
    from batchapp.celery import app

    # A queue nobody consumes (given as a Queue: a name must be one of task_queues).
    nobody = Queue(f"nobody-{os.getpid()}", routing.EXCHANGE, routing_key=f"nobody-{os.getpid()}")
    result = calculate_sum.apply_async((1,), queue=nobody)
    try:
        with pytest.raises(CeleryTimeoutError):
            result.get(timeout=0.2)
    finally:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(f"nobody-{os.getpid()}")


def test_worker_log_has_no_deprecation_warning(worker: CeleryProcess) -> None:
    assert calculate_sum.delay(1).get(timeout=RESULT_TIMEOUT) == 1
    assert "Deprecat" not in worker.log()
