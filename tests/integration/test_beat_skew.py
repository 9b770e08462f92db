"""The schedule holds under clock skew: two beats on one database, one host 20 s ahead of it and
one 20 s behind (libfaketime), the leader SIGKILLed half-way; a worker on the true clock runs
every tick. Runs are counted on the worker's side (the ledger's report jobs, the results, the
worker's log), since the beats' own log lines carry their skewed clocks.
"""

from __future__ import annotations

import re
import signal
import time
from datetime import UTC
from itertools import pairwise
from pathlib import Path

import pytest
from celery.result import AsyncResult
from sqlalchemy import select

from batchapp.celery import app
from batchapp.cli.processes import CeleryProcess
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import beat_entries, beat_leases, beat_sends, ensure_schema, jobs
from tests.integration.conftest import RESULT_TIMEOUT, Stack

# Debian's faketime package, wherever its multiarch folder is.
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
INTERVAL_S = 2.0
SENDS_EACH = 10  # per beat: at least 20 intervals in all
# PostgreSQL with a session time zone other than UTC: the database's clock must not shift with it.
SEOUL = "?options=-c%20timezone%3DAsia/Seoul"
SENT = re.compile(r"beat: sent (?:again )?(\S+) \(\S+\) as (\S+)$", re.M)


def skewed(offset: str) -> dict[str, str]:
    """The environment that runs a process with its clock moved by ``offset`` ("+20s")."""
    assert LIBFAKETIME is not None, "libfaketime.so.1 missing: apt-get install faketime"
    # The monotonic clock moves too: left alone, libfaketime 0.9.10 fails Python's time.sleep.
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset}


def task_ids(entry: str, *beats: CeleryProcess) -> list[str]:
    """The ticks of ``entry`` the beats sent, each once (a takeover resends under the same id)."""
    found = [sent for beat in beats for sent in SENT.findall(beat.log())]
    sent = [task_id for name, task_id in found if name == entry]
    return list(dict.fromkeys(sent))


def wait_for_sends(beat: CeleryProcess, count: int) -> None:
    beat.wait_for_log("beat: sent calculate-sum", timeout=30 + 3 * count * INTERVAL_S, count=count)


def report_job_times(url: str, since: float) -> list[float]:
    """When each report job since ``since`` was created by the worker (its true clock)."""
    with engine_for(url).connect() as connection:
        rows = connection.execute(
            select(jobs.c.created_at).where(jobs.c.name == "report").order_by(jobs.c.created_at)
        ).all()
    times = [created.replace(tzinfo=UTC).timestamp() for (created,) in rows]
    return [when for when in times if when >= since]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("leader_offset", "standby_offset"),
    [("+20s", "-20s"), ("-20s", "+20s")],
    ids=["leader-ahead", "leader-behind"],
)
def test_skewed_beats_run_each_tick_once_on_time_and_unexpired(
    stack: Stack, postgres_url: str, leader_offset: str, standby_offset: str
) -> None:
    # PostgreSQL only: SQLite's clock is that of the process running the statement, so
    # libfaketime would move it with the beat; beats on one SQLite file share one host's clock.
    database, url = "postgresql", postgres_url
    beat_url = url + SEOUL
    ensure_schema(engine_for(url))
    with engine_for(url).begin() as connection:  # the last case's lease and last runs
        for table in (beat_leases, beat_entries, beat_sends):
            connection.execute(table.delete())
    started = time.time()
    env = {"BATCHAPP_DATABASE_URL": beat_url, "BATCHAPP_BEAT_INTERVAL": str(INTERVAL_S)}
    worker = stack.worker(f"skew-{database}", **env)
    leader = standby = None
    try:
        leader = stack.beat(**env, **skewed(leader_offset))
        leader.wait_for_log("beat: leading", timeout=30)
        standby = stack.beat(**env, **skewed(standby_offset))
        standby.wait_for_log("beat: standing by", timeout=30)
        wait_for_sends(leader, SENDS_EACH)
        leader.signal(signal.SIGKILL)
        leader.popen.wait()
        killed_at = time.time()
        standby.wait_for_log("beat: leading", timeout=30)
        wait_for_sends(standby, SENDS_EACH)
        standby.stop()
        sums = task_ids("calculate-sum", leader, standby)
        reports = len(task_ids("sales-report", leader, standby))
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(report_job_times(url, started)) < reports and time.monotonic() < deadline:
            time.sleep(0.2)  # the last ticks may still be on their way to the worker
        states = [AsyncResult(task_id, app=app).state for task_id in sums]
        deadline = time.monotonic() + RESULT_TIMEOUT
        while "PENDING" in states and time.monotonic() < deadline:
            time.sleep(0.2)
            states = [AsyncResult(task_id, app=app).state for task_id in sums]
    finally:
        worker.stop()  # a worker left running would take the next test's ticks
        for beat in (leader, standby):
            if beat is not None:
                beat.stop()

    report_times = report_job_times(url, started)
    gaps = [round(b - a, 2) for a, b in pairwise(report_times)]
    takeover_gap = next(
        (round(b - a, 2) for a, b in pairwise(report_times) if a <= killed_at <= b), None
    )
    discarded = worker.log().count("Discarding revoked task")
    print(
        f"\nbeats at {leader_offset} (leader, SIGKILLed) and {standby_offset} on {database}, "
        f"interval {INTERVAL_S:g} s: calculate-sum sent {len(sums)} times, states "
        f"{sorted(set(states))}; sales-report sent {reports} times, {len(report_times)} report "
        f"jobs, gaps {gaps} s (across the kill {takeover_gap}); {discarded} discarded as expired"
    )
    assert discarded == 0
    assert states == ["SUCCESS"] * len(sums)
    assert len(sums) >= 2 * SENDS_EACH
    # The leader is SIGKILLed right after a send: it may have sent the report tick of that
    # moment and died before logging it, so the ledger may hold one job more than the logs.
    assert reports <= len(report_times) <= reports + 1
    # Once per interval, within an interval of jitter: none twice, none skipped, none late.
    assert all(INTERVAL_S / 2 <= gap < 2 * INTERVAL_S for gap in gaps), gaps
