"""Faults: killed workers, deploys, broker drops, many SQLite writers, beat restarts, time limits.

Each test ends by counting that nothing was lost and nothing was written twice, and prints the
figure it counted (shown with ``pytest -s``; the README's Reliability table quotes them).
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import pytest
from sqlalchemy import Integer, cast, func, select

from batchapp import ledger
from batchapp.jobs import JobContext
from batchapp.processes import worker as start_worker
from batchapp.sales_csv import write_sample
from batchapp.tables import chunks, sales
from batchapp.tasks import calculate_sum, publish_chunks, run_chunk
from tests.conftest import RESULT_TIMEOUT, RUN_DATA_DIR, Stack

pytestmark = pytest.mark.slow
WAIT = 120.0


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def rows_of(ctx: JobContext, seed: int) -> tuple[int, int]:
    """(rows, distinct order ids) in ``sales`` from sample files written with ``seed``."""
    with ctx.engine.connect() as connection:
        found = connection.execute(
            select(func.count(), func.count(func.distinct(sales.c.order_id))).where(
                sales.c.order_id.like(f"S{seed}-%")
            )
        ).one()
    return int(found[0]), int(found[1])


def chunk_counts(ctx: JobContext, job_id: str) -> tuple[int, int]:
    """(items counted over all chunks, chunks the broker redelivered)."""
    with ctx.engine.connect() as connection:
        found = connection.execute(
            select(
                func.sum(chunks.c.items_done + chunks.c.items_failed),
                func.sum(cast(chunks.c.redelivered, Integer)),
            ).where(chunks.c.job_id == job_id)
        ).one()
    return int(found[0] or 0), int(found[1] or 0)


def test_sigkill_mid_import_loses_and_duplicates_nothing(stack: Stack) -> None:
    ctx = stack.ctx
    rows = 200_000
    bad = write_sample(RUN_DATA_DIR / "kill.csv", rows, bad_fraction=0.01, seed=41).bad
    first = stack.worker("doomed")
    view = ledger.submit(
        ctx, "import_csv", {"path": "kill.csv", "chunk_rows": 10_000}, publish_chunks
    )
    wait_until(lambda: ledger.get(ctx, view.id).chunks_done >= 4, what="4 chunks done")
    first.signal(signal.SIGKILL)
    first.popen.wait()
    stack.worker("rescuer")
    done = ledger.wait(ctx, view.id, timeout=WAIT)

    counted, redelivered = chunk_counts(ctx, view.id)
    stored, distinct = rows_of(ctx, 41)
    print(
        f"\nSIGKILL mid-import of {rows:,} rows: {done.result['rows']:,} rows counted, "
        f"{stored:,} stored of {rows - bad:,} good, {stored - distinct} duplicates, "
        f"{redelivered} chunk(s) redelivered"
    )
    assert done.status == "succeeded"
    assert done.result["rows"] == counted == rows
    assert stored == distinct == rows - bad
    assert redelivered >= 1


def test_sigterm_mid_job_finishes_or_hands_back_and_exits_in_the_grace_period(
    stack: Stack,
) -> None:
    ctx = stack.ctx
    rows = 200_000
    write_sample(RUN_DATA_DIR / "term.csv", rows, seed=42)
    deployed = stack.worker("old")
    view = ledger.submit(
        ctx, "import_csv", {"path": "term.csv", "chunk_rows": 20_000}, publish_chunks
    )
    wait_until(lambda: ledger.get(ctx, view.id).chunks_done >= 2, what="2 chunks done")
    started = time.monotonic()
    deployed.popen.send_signal(signal.SIGTERM)  # what docker stop sends to the main process
    deployed.popen.wait(timeout=WAIT)
    took = time.monotonic() - started
    at_exit = ledger.get(ctx, view.id).chunks_done
    stack.worker("new")
    done = ledger.wait(ctx, view.id, timeout=WAIT)

    stored, distinct = rows_of(ctx, 42)
    print(
        f"\nSIGTERM mid-import of {rows:,} rows: worker exited in {took:.1f} s with "
        f"{at_exit}/10 chunks done; after restart {stored:,} rows, {stored - distinct} dupes"
    )
    assert deployed.popen.returncode == 0
    assert took < 60  # far inside the compose stop_grace_period (400 s)
    assert done.status == "succeeded"
    assert stored == distinct == rows


def test_task_over_its_time_limit_is_stopped_and_recorded_and_the_worker_serves_on(
    stack: Stack,
) -> None:
    ctx = stack.ctx
    write_sample(RUN_DATA_DIR / "slow.csv", 300_000, seed=43)
    stack.worker("limited")

    def publish_with_short_limit(job_id: str, indexes: Sequence[int]) -> None:
        # Celery sends the caller's time limits in each message; the worker enforces them.
        for index in indexes:
            run_chunk.apply_async((job_id, index), soft_time_limit=0.2, time_limit=5)

    view = ledger.submit(
        ctx, "import_csv", {"path": "slow.csv", "chunk_rows": 300_000}, publish_with_short_limit
    )
    done = ledger.wait(ctx, view.id, timeout=WAIT)

    print(f"\nsoft time limit 0.2 s on a 300,000-row chunk: job {done.status}: {done.error}")
    assert done.status == "failed"
    assert "SoftTimeLimitExceeded" in (done.error or "")
    assert calculate_sum.delay(10).get(timeout=RESULT_TIMEOUT) == 55


def test_worker_that_cannot_reach_the_broker_retries_and_says_so(stack: Stack) -> None:
    env = {**stack.env, "BATCHAPP_BROKER_URL": "amqp://guest:s3cret@127.0.0.1:1//"}
    process = start_worker(env, RUN_DATA_DIR / "logs" / "no-broker.log", hostname="lost@%h")
    stack.started.append(process)
    process.wait_for_log("Trying again in", timeout=30, count=2)

    assert process.popen.poll() is None
    assert "Cannot connect to amqp://guest:**@127.0.0.1:1//" in process.log()
    assert "s3cret" not in process.log()


def test_four_writers_beat_and_callers_never_see_database_is_locked(stack: Stack) -> None:
    ctx = stack.ctx
    worker = stack.worker("busy", concurrency=4)
    beat = stack.beat(BATCHAPP_BEAT_INTERVAL="0.5")
    job_ids: list[str] = []
    results = []
    stop = time.monotonic() + 8

    def caller() -> None:
        while time.monotonic() < stop:
            results.append(calculate_sum.delay(100))

    callers = [threading.Thread(target=caller) for _ in range(2)]
    for thread in callers:
        thread.start()
    while time.monotonic() < stop:
        view = ledger.submit(ctx, "parallel_sum", {"n": 20_000, "chunk_size": 100}, publish_chunks)
        job_ids.append(view.id)
    for thread in callers:
        thread.join()
    beat.stop()  # it would stay the leading beat for the module's later tests
    finished = [ledger.wait(ctx, job_id, timeout=WAIT) for job_id in job_ids]
    values = [result.get(timeout=WAIT) for result in results]

    logs = worker.log() + beat.log()
    locked = logs.count("database is locked")
    print(
        f"\n4 writers + beat + 3 callers for 8 s: {len(job_ids)} jobs x 200 chunks, "
        f"{len(values)} results, {locked} 'database is locked'"
    )
    assert locked == 0
    assert all(view.status == "succeeded" and view.result == 200010000 for view in finished)
    assert values == [5050] * len(values)


def test_beat_killed_and_restarted_does_not_fire_a_tick_twice(stack: Stack) -> None:
    interval = 3.0
    stack.worker("ticks")
    beat = stack.beat(BATCHAPP_BEAT_INTERVAL=str(interval))
    beat.wait_for_log("Sending due task calculate-sum", timeout=30)
    beat.signal(signal.SIGKILL)
    beat.popen.wait()
    restarted = stack.beat(BATCHAPP_BEAT_INTERVAL=str(interval))
    restarted.wait_for_log("Sending due task calculate-sum", timeout=30)

    sends = [
        _log_time(line)
        for line in (beat.log() + restarted.log()).splitlines()
        if "Sending due task calculate-sum" in line
    ]
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    print(f"\nbeat SIGKILLed after a tick and restarted: gaps between sends {gaps}")
    assert all(gap >= interval * 0.9 for gap in gaps), gaps


def _log_time(line: str) -> float:
    stamp = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
    assert stamp is not None, line
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def test_broker_drops_and_restarts_lose_nothing(stack: Stack) -> None:
    from kombu.exceptions import OperationalError

    from batchapp.celery import app
    from batchapp.sums import sum_to

    ctx = stack.ctx
    worker = stack.worker("steady")
    vhost = app.conf.broker_url.rsplit("/", 1)[1]
    before = ledger.submit(ctx, "parallel_sum", {"n": 300_000, "chunk_size": 1_000}, publish_chunks)
    sums = [calculate_sum.delay(i) for i in range(50)]
    rabbitmqctl("close_all_connections", "-p", vhost, "batchapp fault test")
    sums += [calculate_sum.delay(i) for i in range(50, 100)]  # publishing right after the drop
    dropped = ledger.wait(ctx, before.id, timeout=WAIT)
    worker_connects = worker.log().count("Connected to amqp://")

    rabbitmqctl("stop_app")
    try:
        with pytest.raises(OperationalError):
            calculate_sum.delay(1)  # during the outage: a clear error, not a silent loss
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    worker.wait_for_log("Connected to amqp://", timeout=WAIT, count=worker_connects + 1)
    after = ledger.submit(ctx, "parallel_sum", {"n": 300_000, "chunk_size": 1_000}, publish_chunks)
    restarted = ledger.wait(ctx, after.id, timeout=WAIT)
    values = [result.get(timeout=WAIT) for result in sums]

    correct = values == [sum_to(i) for i in range(100)]
    print(
        f"\nclose_all_connections + stop_app/start_app under load: jobs {dropped.status}/"
        f"{restarted.status}, {len(values)} sums, all correct: {correct}"
    )
    assert dropped.status == restarted.status == "succeeded"
    assert dropped.result == restarted.result == sum_to(300_000)
    assert dropped.chunks_done == restarted.chunks_done == 300
    assert values == [sum_to(i) for i in range(100)]
