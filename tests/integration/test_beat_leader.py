"""Any number of beats: one leads by a lease in the database, the others take over when it dies.

The lease's interleavings of tests/unit/test_beat_leader.py are collected here again on
PostgreSQL (with a session time zone that is not UTC); then real beat processes: the leader
SIGKILLed right after a send, and every tick counted from the beats' logs, the results and the
ledger.
"""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from datetime import datetime
from itertools import pairwise

import pytest
from celery.result import AsyncResult
from sqlalchemy import Engine, select

from batchapp.beat import leases
from batchapp.celery import app
from batchapp.cli.processes import CeleryProcess
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import beat_entries, beat_leases, ensure_schema, jobs
from tests.integration.conftest import RESULT_TIMEOUT, Stack
from tests.unit.test_beat_leader import (  # noqa: F401 - collected here, on PostgreSQL
    database_clock,
    test_a_leader_on_a_skewed_host_records_by_the_databases_clock,
    test_a_leader_that_lost_its_lease_cannot_record_a_tick,
    test_a_released_lease_is_taken_at_once,
    test_beats_racing_for_a_free_lease_get_one_holder,
    test_one_holder_at_a_time_until_the_lease_expires,
    test_skewed_hosts_agree_on_the_lease_by_the_databases_clock,
    test_the_clock_offset_is_the_databases_clock_minus_this_hosts,
    test_the_databases_clock_is_utc_whatever_the_session_time_zone,
)

INTERVAL_S = 3.0
LEADING = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*beat: leading", re.M)
SENT = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*beat: sent (\S+) \((\S+)\) as (\S+)$", re.M
)


@pytest.fixture(params=["postgresql"])
def engine(postgres_url: str) -> Engine:
    # A session time zone other than UTC: lease times must not shift with it.
    engine = engine_for(postgres_url + "?options=-c%20timezone%3DAsia/Seoul")
    ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(beat_leases.delete())
        connection.execute(beat_entries.delete())
    return engine


# --- real beat processes --------------------------------------------------------------------


def sends(*beats: CeleryProcess) -> dict[str, list[tuple[float, str]]]:
    """Each entry's sends from the beats' logs: (time, task id), in time order."""
    by_entry: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for beat in beats:
        for stamp, entry, _task, task_id in SENT.findall(beat.log()):
            by_entry[entry].append((log_time(stamp), task_id))
    return {entry: sorted(times) for entry, times in by_entry.items()}


def log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def wait_for_new_send(beat: CeleryProcess, seen: int, timeout: float = 30.0) -> None:
    beat.wait_for_log("beat: sent calculate-sum", timeout=timeout, count=seen + 1)


def run_two_beats(
    stack: Stack, env: dict[str, str]
) -> tuple[dict[str, list[tuple[float, str]]], str]:
    """Two beats; the leader SIGKILLed right after its second send, the other stopped after two
    sends of its own. Returns the sends from both logs, and the logs."""
    first, second = stack.beat(**env), stack.beat(**env)
    try:
        leader, standby = kill_the_leader_after_a_send(first, second)
    finally:
        first.stop()
        second.stop()
    return sends(leader, standby), leader.log() + standby.log()


def kill_the_leader_after_a_send(
    first: CeleryProcess, second: CeleryProcess
) -> tuple[CeleryProcess, CeleryProcess]:
    deadline = time.monotonic() + 30
    while "beat: leading" not in first.log() + second.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    leader, standby = (first, second) if "beat: leading" in first.log() else (second, first)
    standby.wait_for_log("beat: standing by", timeout=30)
    wait_for_new_send(leader, 1)
    leader.signal(signal.SIGKILL)
    leader.popen.wait()
    standby.wait_for_log("beat: leading", timeout=30)
    wait_for_new_send(standby, 2)
    return leader, standby


def report_job_times(url: str) -> list[float]:
    """When each report job was created, in order (seconds)."""
    with engine_for(url).connect() as connection:
        rows = connection.execute(
            select(jobs.c.created_at).where(jobs.c.name == "report").order_by(jobs.c.created_at)
        ).all()
    return [created.timestamp() for (created,) in rows]


def count_report_jobs(url: str) -> int:
    return len(report_job_times(url))


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_beats_one_sends_and_the_other_takes_over_when_it_is_killed(
    stack: Stack, request: pytest.FixtureRequest, database: str
) -> None:
    url = stack.database_url if database == "sqlite" else request.getfixturevalue("postgres_url")
    env = {"BATCHAPP_DATABASE_URL": url, "BATCHAPP_BEAT_INTERVAL": str(INTERVAL_S)}
    worker = stack.worker(f"ticks-{database}", **env)
    try:
        sent, logs = run_two_beats(stack, env)
        reports = len(sent["sales-report"])
        deadline = time.monotonic() + RESULT_TIMEOUT
        while count_report_jobs(url) < reports and time.monotonic() < deadline:
            time.sleep(0.1)  # the last tick may still be on its way to the worker
        results = [
            AsyncResult(task_id, app=app).get(timeout=RESULT_TIMEOUT)
            for _, task_id in sent["calculate-sum"]
        ]
    finally:
        worker.stop()  # a worker left running would take the next test's ticks

    ticks = [when for when, _ in sent["calculate-sum"]]
    gaps = [round(b - a, 2) for a, b in pairwise(ticks)]
    report_times = report_job_times(url)
    report_jobs = len(report_times)
    # logs: the killed leader's, then the standby's, whose last "leading" is its takeover.
    takeover_s = log_time(LEADING.findall(logs)[-1]) - ticks[1]
    print(
        f"\ntwo beats on {database}, leader SIGKILLed after a send: the standby led "
        f"{takeover_s:.2f} s after that send; calculate-sum sent "
        f"{len(ticks)} times (gaps {gaps} s, interval {INTERVAL_S:g} s), all {len(results)} "
        f"answered; sales-report sent {reports} times, {report_jobs} report jobs in the ledger"
    )
    assert len(ticks) >= 4
    assert takeover_s < INTERVAL_S
    assert all(INTERVAL_S * 0.9 <= gap < INTERVAL_S * 1.9 for gap in gaps), gaps
    assert results == [5050] * len(ticks)
    # Every logged send made its job. The leader is SIGKILLed right after a send: it may have
    # sent the report tick of that moment too and died before logging it (recorded, then sent,
    # then logged), so the ledger may hold one job more than the logs show, never a double.
    assert reports <= report_jobs <= reports + 1
    assert all(b - a >= INTERVAL_S / 2 for a, b in pairwise(report_times)), report_times
    assert leases.holder_of(engine_for(url), "beat") is None, "a clean stop gives the lease up"
    assert "Deprecat" not in logs
