"""Task events with BATCHAPP_TASK_EVENTS: what Flower and `celery events` see, from the start."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from batchapp.celery import app
from tests.integration.conftest import RESULT_TIMEOUT, Stack

CALCULATE_SUM_100 = ("batchapp.tasks.calculate_sum", "--args", "[100]")
TASK_EVENTS = ("task-sent", "task-received", "task-started", "task-succeeded")


def celery_call(env: dict[str, str]) -> str:
    """``celery -A batchapp call calculate_sum`` as a user runs it; the new task's id."""
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "batchapp", "call", *CALCULATE_SUM_100],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_every_task_event_of_a_new_workers_first_task_reaches_a_receiver(stack: Stack) -> None:
    env = {**stack.env, "BATCHAPP_TASK_EVENTS": "true"}
    seen: dict[str, set[str]] = defaultdict(set)

    def record(event: dict[str, Any]) -> None:
        if event["type"].startswith("task-"):
            seen[event["uuid"]].add(event["type"])

    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": record})
        # The receiver's queue is bound before anything starts, as Flower's is.
        with receiver.consumer_context(wakeup=False) as (consuming, _, _):
            stack.worker(**{"BATCHAPP_TASK_EVENTS": "true"})
            task_id = celery_call(env)  # the worker's first task, just after it is ready
            deadline = time.monotonic() + RESULT_TIMEOUT
            while not set(TASK_EVENTS) <= seen[task_id] and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    consuming.drain_events(timeout=0.5)

    assert set(TASK_EVENTS) <= seen[task_id], dict(seen)
