"""A flood of malformed messages on the calls queue holds up none of the calls behind it.

The full-size figures (30,000 bad messages) are benchmarks/bm_flood.py's; this is the same
scene at a smaller size, timed loosely enough for a shared machine.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from batchapp.broker import dead_letters
from batchapp.celery import app
from batchapp.cli.processes import CeleryProcess
from batchapp.tasks import calculate_sum
from tests.flood import publish_not_json
from tests.integration.conftest import RESULT_TIMEOUT, Stack

BAD = 5000
PUBLISH_S = 1.5
CALL_BOUND_S = 2.0


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[CeleryProcess]:
    yield stack.worker()


def dead_count() -> int:
    count, _ = dead_letters.peek(app, 0, timeout=RESULT_TIMEOUT)
    return count


def flood(ids: list[str], done: threading.Event) -> None:
    try:
        publish_not_json(app.conf.broker_url, ids, PUBLISH_S)
    finally:
        done.set()


def test_calls_return_within_2_s_while_bad_messages_flood_their_queue(
    worker: CeleryProcess,
) -> None:
    assert calculate_sum.delay(1).get(timeout=RESULT_TIMEOUT) == 1
    dead_before = dead_count()
    ids = [f"flood-{uuid.uuid4()}" for _ in range(BAD)]
    published = threading.Event()
    publisher = threading.Thread(target=flood, args=(ids, published), daemon=True)
    publisher.start()

    seconds, values = [], []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = time.perf_counter()
        values.append(calculate_sum.delay(100).get(timeout=RESULT_TIMEOUT))
        seconds.append(time.perf_counter() - started)
        if published.is_set() and dead_count() - dead_before >= BAD:
            break
    publisher.join(RESULT_TIMEOUT)

    assert dead_count() - dead_before == BAD
    assert values == [5050] * len(values)
    assert max(seconds) < CALL_BOUND_S, f"{len(seconds)} calls, slowest {max(seconds):.2f} s"
    log = worker.log()
    assert log.count("into batchapp.dead: body is not JSON") >= BAD
    assert all(repr(task_id) in log for task_id in ids[:: BAD // 50])
