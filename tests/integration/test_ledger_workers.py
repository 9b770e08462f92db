"""The ledger with real worker processes: cancel, chunks that kill their process, hard time
limits, and the reconciler that beat runs. The jobs used are in tests/ledger_jobs.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import tests.ledger_jobs  # noqa: F401 - registers the test jobs in this process too
from batchapp import ledger, service
from batchapp.cli.processes import CeleryProcess
from batchapp.jobs.base import utcnow
from batchapp.tasks import publish_chunks, run_chunk
from tests.integration.conftest import RUN_DATA_DIR, Stack
from tests.support import run_cli, wait_until

WAIT = 60.0
# A job nothing moves for 2 s is stale to the worker's reconciler.
LIMITS = {"BATCHAPP_TASK_SOFT_TIME_LIMIT": "1", "BATCHAPP_TASK_TIME_LIMIT": "2"}


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[CeleryProcess]:
    yield stack.worker("w1", concurrency=2, extra=["-I", "tests.ledger_jobs"], **LIMITS)


def test_cancel_stops_a_running_job_and_retry_runs_the_rest(
    stack: Stack, worker: CeleryProcess
) -> None:
    ctx = stack.ctx
    view = ledger.submit(ctx, "slow_sum", {"n": 200, "ms": 20}, publish_chunks)
    wait_until(lambda: ledger.get(ctx, view.id).chunks_done >= 20, "20 chunks done", timeout=WAIT)

    started = utcnow()
    cancelled = run_cli("cancel", view.id, "--json", env=stack.env)
    took = (utcnow() - started).total_seconds()
    at_cancel = ledger.get(ctx, view.id)
    shown = json.loads(cancelled.stdout)
    assert at_cancel.finished_at is not None
    print(
        f"\ncancel: job {at_cancel.status} "
        f"{(at_cancel.finished_at - started).total_seconds():.2f} s after the command started "
        f"(the command took {took:.2f} s), {at_cancel.chunks_done}/200 chunks done"
    )

    assert cancelled.returncode == 0, cancelled.stderr
    assert at_cancel.status == "cancelled"
    assert shown["chunks"] == {
        "total": 200,
        "done": at_cancel.chunks_done,
        "failed": 0,
        "cancelled": 200 - at_cancel.chunks_done,
    }
    # Every chunk cancelled is delivered once more and dropped; none runs.
    dropped = 200 - at_cancel.chunks_done
    wait_until(
        lambda: worker.log().count(f"{view.id} chunk") >= 200, "every message handled", timeout=WAIT
    )
    wait_until(
        lambda: worker.log().count("was cancelled; dropped") >= dropped,
        "the cancelled dropped",
        timeout=WAIT,
    )
    after = ledger.get(ctx, view.id)
    assert (after.status, after.chunks_done, after.items_done) == (
        "cancelled",
        at_cancel.chunks_done,
        at_cancel.chunks_done,
    )

    retried = run_cli("retry", view.id, env=stack.env)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == f"job {view.id}: republished {dropped} chunk(s)"
    done = ledger.wait(ctx, view.id, timeout=WAIT)
    assert (done.status, done.result, done.chunks_done) == ("succeeded", 200 * 201 // 2, 200)


def test_cancel_of_a_finished_or_unknown_job_is_one_error_line(
    stack: Stack, worker: CeleryProcess
) -> None:
    done = ledger.wait(
        stack.ctx,
        ledger.submit(stack.ctx, "parallel_sum", {"n": 10}, publish_chunks).id,
        timeout=WAIT,
    )
    finished = run_cli("cancel", done.id, env=stack.env)
    unknown = run_cli("cancel", "nope", env=stack.env)

    assert finished.returncode != 0
    assert finished.stderr.strip() == (
        f"Error: job {done.id} is succeeded; only a running job can be cancelled"
    )
    assert unknown.returncode != 0
    assert unknown.stderr.strip() == "Error: no job with id 'nope'"


@pytest.mark.slow
def test_a_chunk_that_kills_its_process_fails_after_max_deliveries(
    stack: Stack, worker: CeleryProcess
) -> None:
    ctx = stack.ctx
    view = ledger.submit(ctx, "kills_its_process", {"n": 3}, publish_chunks)
    done = ledger.wait(ctx, view.id, timeout=WAIT)
    rows = ledger.chunk_rows(ctx, view.id)
    print(f"\npoison chunk: {rows[0].error!r} after {rows[0].deliveries} deliveries")

    assert (done.status, done.chunks_done, done.chunks_failed) == ("failed", 2, 1)
    assert rows[0].error.startswith("worker lost 3 times")
    assert worker.log().count("Task handler raised error: WorkerLostError") == 3
    after = ledger.submit(ctx, "parallel_sum", {"n": 100, "chunk_size": 10}, publish_chunks)
    assert ledger.wait(ctx, after.id, timeout=WAIT).result == 5050


def ledger_fds(pid: int, database: Path) -> list[str]:
    """The files of ``database`` (with its -wal and -shm) that process ``pid`` has open."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except FileNotFoundError:
            continue
    return [target for target in targets if target.startswith(str(database))]


@pytest.mark.slow
def test_after_a_hard_time_limit_the_main_process_keeps_no_ledger_connection(
    stack: Stack, worker: CeleryProcess
) -> None:
    ctx = stack.ctx
    database = RUN_DATA_DIR / f"{stack.name}.sqlite"

    def publish_with_short_limits(job_id: str, indexes: Sequence[int]) -> None:
        # The caller's limits travel in the message and win over the worker's.
        for index in indexes:
            run_chunk.apply_async((job_id, index), soft_time_limit=1, time_limit=2)

    view = ledger.submit(ctx, "ignores_soft_limit", {"n": 1}, publish_with_short_limits)
    done = ledger.wait(ctx, view.id, timeout=WAIT)

    assert done.status == "failed"
    assert "TimeLimitExceeded" in (done.error or "")
    assert "Hard time limit (2s) exceeded" in worker.log()
    # The failure commits a moment before its unpooled connection closes: let go, not never held.
    wait_until(lambda: ledger_fds(worker.pid, database) == [], "the main process lets go", 10)
    after = ledger.submit(ctx, "parallel_sum", {"n": 100, "chunk_size": 10}, publish_chunks)
    assert ledger.wait(ctx, after.id, timeout=WAIT).result == 5050
    assert ledger_fds(worker.pid, database) == []


def test_beat_runs_the_reconciler_that_finishes_a_job_whose_messages_were_lost(
    stack: Stack, worker: CeleryProcess
) -> None:
    ctx = stack.ctx

    def lost(job_id: str, indexes: Sequence[int]) -> None:
        """The broker took the messages and lost them."""

    view = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, lost)
    beat = stack.beat(BATCHAPP_BEAT_INTERVAL="0.5", **LIMITS)
    try:
        done = ledger.wait(ctx, view.id, timeout=WAIT)
    finally:
        beat.stop()

    assert (done.status, done.result) == ("succeeded", 465)
    assert f"reconciler: job {view.id} republished 3 chunk(s)" in worker.log()


def test_a_chunk_of_a_job_another_ledger_has_is_an_error_naming_this_workers_ledger(
    stack: Stack, worker: CeleryProcess
) -> None:
    run_chunk.delay("f" * 32, 0)

    worker.wait_for_log(f"job {'f' * 32} chunk 0 is not in the ledger at sqlite:///")
    line = next(line for line in worker.log().splitlines() if f"job {'f' * 32}" in line)
    assert "ERROR/ForkPoolWorker" in line
    assert f"{stack.name}.sqlite (do caller and worker share BATCHAPP_DATABASE_URL?" in line


def test_celery_tells_whether_a_chunk_of_a_job_is_in_flight(
    stack: Stack, worker: CeleryProcess
) -> None:
    ctx = stack.ctx
    lost = ledger.submit(ctx, "parallel_sum", {"n": 10}, lambda *_: None)
    running = ledger.submit(ctx, "slow_sum", {"n": 1, "ms": 6000}, publish_chunks)
    try:
        # Once the running chunk's message has left the queue, nothing of `lost` is anywhere.
        wait_until(lambda: not service.chunks_in_flight(lost), "the lost job seen idle", 20)
        assert service.chunks_in_flight(running)
    finally:
        ledger.cancel(ctx, lost.id)
        ledger.cancel(ctx, running.id)
