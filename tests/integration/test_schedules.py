"""Schedules on a running deployment: a job's declared schedule runs; `batchapp schedule add`
fires within one beat interval, pause stops it, resume restarts it, remove stops it; and with
two beats, the leader SIGKILLed, the stored entry keeps firing with no tick sent twice. The
stored entries on SQLite and PostgreSQL.

Every send is read from the beats' logs and every run from the ledger (one job per tick).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from itertools import pairwise

import pytest
from sqlalchemy import Engine, select

from batchapp.beat import leases
from batchapp.cli.processes import CeleryProcess
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import beat_entries, ensure_schema, jobs, schedule_changes, schedules
from tests.integration.conftest import RESULT_TIMEOUT, Stack
from tests.integration.test_beat_leader import sends
from tests.support import run_cli
from tests.unit.test_schedules import (  # noqa: F401 - collected here, on PostgreSQL
    test_a_taken_or_unknown_name_is_refused_and_changes_nothing,
    test_an_entry_is_stored_listed_paused_resumed_and_removed,
    test_every_change_moves_the_counter_and_a_no_op_does_not,
    test_removing_an_entry_forgets_its_last_run,
    test_two_adds_of_one_name_at_once_store_one_entry,
)

INTERVAL_S = 3.0
EVERY_S = 2.0
JOB = "parallel_sum"
DECLARING_JOBS = {"BATCHAPP_JOBS": "tests.scheduled_jobs"}


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    """The store's tests of tests/unit/test_schedules.py, on PostgreSQL in Asia/Seoul; the
    beats of the tests below find no entry they left."""
    engine = engine_for(postgres_url + "?options=-c%20timezone%3DAsia/Seoul")
    ensure_schema(engine)
    yield engine
    with engine.begin() as connection:
        for table in (schedules, schedule_changes, beat_entries):
            connection.execute(table.delete())
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, stack: Stack) -> dict[str, str]:
    url = (
        stack.database_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    return {
        **stack.env,
        "BATCHAPP_DATABASE_URL": url,
        "BATCHAPP_BEAT_INTERVAL": str(INTERVAL_S),
    }


def cli(env: dict[str, str], *args: str) -> str:
    done = run_cli("schedule", *args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def job_times(env: dict[str, str], n: int) -> list[float]:
    """When each run of the entry (a parallel_sum job with its n) was created, in order."""
    with engine_for(env["BATCHAPP_DATABASE_URL"]).connect() as connection:
        rows = connection.execute(
            select(jobs.c.created_at, jobs.c.params).where(jobs.c.name == JOB)
        ).all()
    return sorted(created.timestamp() for created, params in rows if params.get("n") == n)


def sent(beats: list[CeleryProcess], entry: str) -> list[float]:
    return [when for when, _ in sends(*beats).get(entry, [])]


def wait_for_sends(beats: list[CeleryProcess], entry: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(sent(beats, entry)) < count:
        assert time.monotonic() < deadline, f"{entry} sent {len(sent(beats, entry))} times"
        time.sleep(0.1)


def wait_for_runs(env: dict[str, str], n: int, count: int) -> list[float]:
    deadline = time.monotonic() + RESULT_TIMEOUT
    while len(times := job_times(env, n)) < count and time.monotonic() < deadline:
        time.sleep(0.1)  # the last tick may still be on its way to the worker
    return times


def two_more_code_ticks(beat: CeleryProcess) -> None:
    """Let beat tick twice more (every INTERVAL_S), long enough for a stored entry to fire."""
    seen = beat.log().count("beat: sent calculate-sum")
    beat.wait_for_log("beat: sent calculate-sum", timeout=30, count=seen + 2)


def test_a_job_that_declares_a_schedule_runs_on_it(stack: Stack) -> None:
    env = {**stack.env, **DECLARING_JOBS, "BATCHAPP_BEAT_INTERVAL": str(INTERVAL_S)}
    worker = stack.worker("declared", **env)
    beat = stack.beat(**env)
    try:
        wait_for_sends([beat], "acme.heartbeat", 2)
    finally:
        beat.stop()
    try:
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(results := heartbeat_results(stack.database_url)) < 2:
            assert time.monotonic() < deadline, results
            time.sleep(0.1)
    finally:
        worker.stop()
    listed = json.loads(cli(env, "--json"))

    assert results[:2] == [5, 5]
    [entry] = [e for e in listed if e["name"] == "acme.heartbeat"]
    assert (entry["source"], entry["schedule"], entry["kwargs"]) == ("code", "every 2 s", {"n": 5})


def heartbeat_results(url: str) -> list[object]:
    with engine_for(url).connect() as connection:
        rows = connection.execute(
            select(jobs.c.result)
            .where(jobs.c.name == "acme.heartbeat", jobs.c.status == "succeeded")
            .order_by(jobs.c.created_at)
        ).all()
    return [result for (result,) in rows]


@pytest.mark.slow
def test_an_added_entry_fires_and_pause_resume_remove_take_effect(
    stack: Stack, env: dict[str, str]
) -> None:
    worker = stack.worker("sched", **env)
    beat = stack.beat(**env)
    try:
        beat.wait_for_log("beat: leading", timeout=30)
        added_at = time.time()
        cli(env, "add", "sum-often", JOB, "n=11", "--every", f"{EVERY_S:g}")
        wait_for_sends([beat], "sum-often", 2)
        first = sent([beat], "sum-often")[0]

        cli(env, "pause", "sum-often")
        beat.wait_for_log("beat: stored schedule reloaded", count=2)
        before_pause = len(sent([beat], "sum-often"))
        two_more_code_ticks(beat)
        while_paused = len(sent([beat], "sum-often")) - before_pause
        paused_row = [line for line in cli(env).splitlines() if line.startswith("sum-often")]

        cli(env, "resume", "sum-often")
        wait_for_sends([beat], "sum-often", before_pause + 1)

        cli(env, "remove", "sum-often")
        beat.wait_for_log("beat: stored schedule reloaded", count=4)
        before_remove = len(sent([beat], "sum-often"))
        two_more_code_ticks(beat)
        after_remove = len(sent([beat], "sum-often")) - before_remove
        runs = wait_for_runs(env, 11, before_remove)
    finally:
        beat.stop()
        worker.stop()

    print(
        f"\nstored entry every {EVERY_S:g} s (beat interval {INTERVAL_S:g} s): first sent "
        f"{first - added_at:.2f} s after add; {while_paused} sent while paused, "
        f"{after_remove} after remove; {before_remove} sends, {len(runs)} runs"
    )
    assert first - added_at < EVERY_S + INTERVAL_S
    assert while_paused <= 1  # a tick sent before the leader saw the pause, at most
    assert paused_row and " paused " in paused_row[0]
    assert after_remove <= 1
    assert len(runs) == before_remove + after_remove
    assert "sum-often" not in cli(env, "--json")


@pytest.mark.slow
def test_a_stored_entry_survives_the_leaders_death_without_a_double_tick(
    stack: Stack, env: dict[str, str]
) -> None:
    cli(env, "add", "sum-ha", JOB, "n=12", "--every", f"{EVERY_S:g}")
    worker = stack.worker("sched-ha", **env)
    first, second = stack.beat(**env), stack.beat(**env)
    try:
        deadline = time.monotonic() + 30
        while "beat: leading" not in first.log() + second.log():
            assert time.monotonic() < deadline, "no beat leads"
            time.sleep(0.05)
        leader, standby = (first, second) if "beat: leading" in first.log() else (second, first)
        wait_for_sends([leader], "sum-ha", 2)
        leader.signal(signal.SIGKILL)
        leader.popen.wait()
        standby.wait_for_log("beat: leading", timeout=30)
        wait_for_sends([standby], "sum-ha", 2)
    finally:
        first.stop()
        second.stop()
    try:
        logged = sent([leader, standby], "sum-ha")
        runs = wait_for_runs(env, 12, len(logged))
    finally:
        worker.stop()
    recorded = leases.recorded_runs(engine_for(env["BATCHAPP_DATABASE_URL"]))["sum-ha"][1]
    cli(env, "remove", "sum-ha")

    gaps = [round(b - a, 2) for a, b in pairwise(runs)]
    print(
        f"\nstored entry every {EVERY_S:g} s, leader SIGKILLed: {len(logged)} sends logged, "
        f"{recorded} recorded, {len(runs)} runs (gaps {gaps} s)"
    )
    # The leader records a tick, sends it, then logs it: killed in between, one tick may be
    # recorded and run without its log line, never sent twice.
    assert len(logged) <= len(runs) <= len(logged) + 1
    assert len(runs) <= recorded <= len(runs) + 1
    assert all(gap >= EVERY_S / 2 for gap in gaps), gaps
    assert all(gap < EVERY_S + INTERVAL_S for gap in gaps), gaps
