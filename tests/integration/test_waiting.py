"""`batchapp submit --wait` with a paused worker and with its database connection cut: it waits
for the job and exits 0, instead of calling a job that is fine stalled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from batchapp import ledger
from batchapp.broker import queues
from batchapp.celery import app
from batchapp.cli.processes import CeleryProcess
from batchapp.ledger.views import STALL_AFTER_S
from batchapp.storage.engines import engine_for
from tests.integration.conftest import Stack, _stack
from tests.support import wait_until

WAITER = "batchapp-waiter"
WAIT = ("--wait", "--json")
# A job idle this long (stall detection, two checks, their broadcasts, and some margin) was
# called stalled before a paused worker counted as possibly holding its chunks.
PAUSE_S = STALL_AFTER_S * 2.5


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def waiting_stack(
    request: pytest.FixtureRequest, stack: Stack, postgres_url: str
) -> Iterator[Stack]:
    if request.param == "sqlite":
        yield stack
        return
    yield from _stack("waiting-pg", postgres_url)


def start_waiter(stack: Stack) -> subprocess.Popen[str]:
    """`batchapp submit parallel_sum n=100 --wait --json`, its PostgreSQL sessions named."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "batchapp"), "submit", "parallel_sum", "n=100", *WAIT],
        env={**stack.env, "PGAPPNAME": WAITER},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def held_unacknowledged() -> bool:
    """The chunks queue has no message ready: the paused worker's consumer has it, unacked."""
    with app.connection_for_write() as connection:
        _, ready, consumers = connection.default_channel.queue_declare(
            queue=queues.CHUNKS, passive=True
        )
    return ready == 0 and consumers == 1


def paused_worker_holding_the_job(stack: Stack) -> tuple[CeleryProcess, subprocess.Popen[str]]:
    """A worker stopped with SIGSTOP, and a waiter whose one chunk RabbitMQ delivered to it."""
    worker = stack.worker("paused", concurrency=1)
    worker.signal(signal.SIGSTOP)
    earlier = {job.id for job in ledger.recent(stack.ctx, 100)}
    waiter = start_waiter(stack)
    wait_until(lambda: handed_to_the_paused_worker(stack, earlier), "its chunk held", 30)
    return worker, waiter


def handed_to_the_paused_worker(stack: Stack, earlier: set[str]) -> bool:
    """Submitted, published, and in the paused worker's prefetch (unacknowledged)."""
    submitted = any(job.id not in earlier for job in ledger.recent(stack.ctx, 1))
    return submitted and held_unacknowledged()


def polling(admin: Engine, handed: datetime) -> bool:
    """The waiter started a statement 0.5 s after its job's message reached the worker: only
    its wait reads that late (submit reads the job once, right after the publish)."""
    with admin.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT max(query_start) > :handed + interval '0.5 s' "
                    "FROM pg_stat_activity WHERE application_name = :name"
                ),
                {"name": WAITER, "handed": handed},
            ).scalar()
        )


def finished(waiter: subprocess.Popen[str], worker: CeleryProcess) -> dict[str, object]:
    worker.signal(signal.SIGCONT)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    return dict(json.loads(out))


def test_submit_wait_outlasts_a_paused_worker_that_holds_its_chunk(
    waiting_stack: Stack,
) -> None:
    worker, waiter = paused_worker_holding_the_job(waiting_stack)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=PAUSE_S)
        job = finished(waiter, worker)
    finally:
        worker.signal(signal.SIGCONT)
        waiter.kill()
        worker.stop()

    assert (job["status"], job["result"]) == ("succeeded", 5050)


# pg_terminate_backend is PostgreSQL's: this one runs on the PostgreSQL stack only.
@pytest.mark.parametrize("waiting_stack", ["postgresql"], indirect=True)
def test_submit_wait_reads_again_when_postgresql_cuts_its_connection(
    waiting_stack: Stack,
) -> None:
    worker, waiter = paused_worker_holding_the_job(waiting_stack)
    admin = engine_for(waiting_stack.database_url)
    cut = 0
    try:
        with admin.connect() as connection:
            handed = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
        wait_until(lambda: polling(admin, handed), "the waiter polling (past submit's reads)", 30)
        # Cut the waiter's connections again and again while it polls, for a few seconds.
        until = time.monotonic() + STALL_AFTER_S / 2
        while time.monotonic() < until and waiter.poll() is None:
            with admin.connect() as connection:
                cut += connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :name"
                    ),
                    {"name": WAITER},
                ).scalar_one()
                connection.commit()
        job = finished(waiter, worker)
    finally:
        worker.signal(signal.SIGCONT)
        waiter.kill()
        worker.stop()
    print(f"\nwaiter: {cut} of its connections cut while it polled")

    assert cut > 0
    assert (job["status"], job["result"]) == ("succeeded", 5050)
