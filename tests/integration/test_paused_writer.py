"""A paused writer on the SQLite ledger, with real workers: a worker stopped outside any
transaction holds no one up, and a writer holding SQLite's write lock past the busy timeout
makes the chunks that wait for it go again, never fail. The jobs are in tests/ledger_jobs.py."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from sqlalchemy.engine import make_url

import tests.ledger_jobs  # registers the test jobs in this process too
from batchapp import ledger
from batchapp.storage.engines import BUSY_TIMEOUT_MS
from batchapp.tasks import publish_chunks, run_chunk
from tests.integration.conftest import Stack
from tests.support import wait_until

JOBS = ["-I", "tests.ledger_jobs"]
WAIT = 120.0
# How long the test keeps a worker's pool process stopped.
PAUSE_S = 10.0
BUSY_TIMEOUT_S = BUSY_TIMEOUT_MS / 1000
# Every chunk waiting for the lock when it was taken gives up once and goes again.
HOLD_S = 1.5 * BUSY_TIMEOUT_S
SENT_AGAIN = "the ledger stayed locked by another writer"


def read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text.isdigit() else None


def process_state(pid: int) -> str:
    """The state letter in /proc/PID/stat (``T`` for stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def test_a_worker_paused_outside_its_transactions_holds_up_no_other_writer(
    stack: Stack,
) -> None:
    ctx = stack.ctx
    pid_path = tests.ledger_jobs.pid_file(ctx)
    pid_path.unlink(missing_ok=True)
    paused = stack.worker("paused", concurrency=1, extra=JOBS)
    n = 3000
    # The one consumer, with one prefetch slot, takes the first chunk: number 1, which writes
    # its process id and sleeps in prepare, where the test stops that process.
    params = {"n": n, "ms": 10, "hold_ms": 5000}
    view = ledger.submit(ctx, "pauses_once", params, publish_chunks)
    pid = wait_until(lambda: read_pid(pid_path), "chunk 1 in prepare", WAIT)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert pid != paused.pid  # the pool process, not the worker's main process
        wait_until(lambda: process_state(pid) == "T", "its pool process stopped", 10)
        stack.worker("other", concurrency=2, extra=JOBS)
        before = ledger.get(ctx, view.id).chunks_done
        started = time.monotonic()
        time.sleep(PAUSE_S / 2)  # the pause the test holds
        halfway = ledger.get(ctx, view.id).chunks_done
        time.sleep(PAUSE_S / 2)
        after = ledger.get(ctx, view.id)
        held = time.monotonic() - started
        assert process_state(pid) == "T"
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        done = ledger.wait(ctx, view.id, timeout=WAIT)
    finally:
        stack.stop_all()  # the next test counts what its own worker logs
    print(
        f"\npaused outside a transaction: {after.chunks_done - before} chunks committed by the "
        f"other worker in the {held:.1f} s its pool process was stopped "
        f"({halfway - before} in the first half); job {done.status}, "
        f"{done.chunks_failed} chunk(s) failed"
    )

    assert halfway > before
    # Still rising in the second half, unless every chunk but the stopped one was done.
    assert after.chunks_done > halfway or after.chunks_done == n - 1
    assert (done.status, done.result, done.chunks_done, done.items_done) == (
        "succeeded",
        n * (n + 1) // 2,
        n,
        n,
    )
    assert done.chunks_failed == 0


def test_a_writer_holding_the_lock_past_the_busy_timeout_fails_and_loses_no_chunk(
    stack: Stack,
) -> None:
    ctx = stack.ctx
    worker = stack.worker("waits", concurrency=2, extra=JOBS)
    path = make_url(stack.database_url).database
    assert path
    # As many chunks as pool processes: each is tried again and again while the lock is held
    # (with more, a chunk sent again waits behind the others in the queue).
    n = 2
    view = ledger.submit(ctx, "slow_sum", {"n": n, "ms": 1000}, publish_chunks)
    holder = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        # An outside writer paused inside its transaction: the write lock, held.
        holder.execute("BEGIN IMMEDIATE")
        locked_at = ledger.get(ctx, view.id).chunks_done
        started = time.monotonic()
        time.sleep(HOLD_S)  # the hold the test keeps
        during = ledger.get(ctx, view.id).chunks_done - locked_at
        sent_again = worker.log().count(SENT_AGAIN)
        held = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    released = time.monotonic()
    done = ledger.wait(ctx, view.id, timeout=WAIT)
    took = time.monotonic() - released
    old_budget = (run_chunk.max_retries + 1) * BUSY_TIMEOUT_S
    print(
        f"\nwrite lock held {held:.1f} s (busy timeout {BUSY_TIMEOUT_S:g} s; before, a chunk "
        f"failed after {run_chunk.max_retries} retries, {old_budget:g} s of waits plus backoff): "
        f"{during} chunks committed meanwhile, {sent_again} chunk tries sent again while it was "
        f"held; job {done.status} {took:.1f} s after the release, {done.chunks_done} of {n} "
        f"chunks done, {done.chunks_failed} failed {ledger.chunk_errors(ctx, view.id)}"
    )

    assert during == 0  # the lock was really held
    assert sent_again >= 1  # a chunk waited the whole busy timeout and went again
    assert (done.status, done.result, done.chunks_done, done.items_done) == (
        "succeeded",
        n * (n + 1) // 2,
        n,
        n,
    )
    assert done.chunks_failed == 0
    assert done.error is None
