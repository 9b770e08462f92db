"""Any number of beats: one leads by a lease in the database, the others take over when it dies.

The lease's interleavings are tested step by step here on SQLite, and again on PostgreSQL (with a
session time zone that is not UTC) by tests/integration/test_beat_leader.py, which also runs real
beat processes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from celery.beat import Scheduler
from sqlalchemy import Engine, update

from batchapp import tasks
from batchapp.beat import leases
from batchapp.beat.scheduler import LeaderScheduler, lease_seconds
from batchapp.celery import app
from batchapp.storage.engines import database_now, engine_for, write_transaction
from batchapp.storage.tables import beat_entries, beat_leases, beat_sends, ensure_schema
from tests.support import run_cli
from tests.unit.conftest import RUN_DATA_DIR

LEASE = timedelta(seconds=10)
T0 = datetime(2026, 11, 26, 1, 0, 0)


@pytest.fixture(params=["sqlite"])  # tests/integration/test_beat_leader.py: on PostgreSQL
def engine() -> Engine:
    url = f"sqlite:///{RUN_DATA_DIR / f'leases-{time.monotonic_ns()}.sqlite'}"
    engine = engine_for(url)
    ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(beat_leases.delete())
        connection.execute(beat_entries.delete())
    return engine


def test_one_holder_at_a_time_until_the_lease_expires(engine: Engine) -> None:
    assert leases.acquire(engine, "beat", "a", LEASE, now=T0)
    assert not leases.acquire(engine, "beat", "b", LEASE, now=T0 + timedelta(seconds=9))
    assert leases.acquire(engine, "beat", "a", LEASE, now=T0 + timedelta(seconds=9))  # renewed
    assert not leases.acquire(engine, "beat", "b", LEASE, now=T0 + timedelta(seconds=18))
    assert leases.acquire(engine, "beat", "b", LEASE, now=T0 + timedelta(seconds=20))
    assert leases.holder_of(engine, "beat", now=T0 + timedelta(seconds=21)) == "b"


def test_a_leader_that_lost_its_lease_cannot_record_a_tick(engine: Engine) -> None:
    assert leases.acquire(engine, "beat", "a", LEASE, now=T0)
    assert leases.record_run(engine, "beat", "a", "tick", T0, 1, now=T0 + timedelta(seconds=1))
    # a pauses past its lease; b takes over and records the next tick.
    assert leases.acquire(engine, "beat", "b", LEASE, now=T0 + timedelta(seconds=11))
    later = T0 + timedelta(seconds=12)
    assert not leases.record_run(engine, "beat", "a", "tick", later, 2, now=later)
    assert leases.record_run(engine, "beat", "b", "tick", later, 2, now=later)
    assert leases.recorded_runs(engine) == {"tick": (later, 2)}


def test_a_released_lease_is_taken_at_once(engine: Engine) -> None:
    assert leases.acquire(engine, "beat", "a", LEASE, now=T0)
    leases.release(engine, "beat", "b")  # not b's to release
    assert not leases.acquire(engine, "beat", "b", LEASE, now=T0)
    leases.release(engine, "beat", "a")
    assert leases.acquire(engine, "beat", "b", LEASE, now=T0)


def test_beats_racing_for_a_free_lease_get_one_holder(engine: Engine) -> None:
    contenders = [f"beat-{i}" for i in range(4)]
    start = threading.Barrier(len(contenders))
    won: list[str] = []

    def contend(holder: str) -> None:
        start.wait()
        if leases.acquire(engine, "beat", holder, LEASE, now=T0):
            won.append(holder)

    threads = [threading.Thread(target=contend, args=(holder,)) for holder in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(won) == 1
    assert leases.holder_of(engine, "beat", now=T0) == won[0]


def test_the_databases_clock_is_utc_whatever_the_session_time_zone(engine: Engine) -> None:
    with engine.connect() as connection:
        now = database_now(connection)
    # This host and the database share a clock here.
    assert abs(now - datetime.now(UTC).replace(tzinfo=None)) < timedelta(seconds=5)


def test_the_clock_offset_is_the_databases_clock_minus_this_hosts(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ahead = timedelta(seconds=20)
    monkeypatch.setattr(leases, "utcnow", lambda: datetime.now(UTC).replace(tzinfo=None) + ahead)
    assert abs(leases.clock_offset(engine) + ahead) < timedelta(seconds=1)


@pytest.fixture
def database_clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The database's clock, set by the test; hosts' clocks an hour either side of it."""
    clock = [T0]
    monkeypatch.setattr(leases, "database_now", lambda connection: clock[0])
    return clock


def host_clock(monkeypatch: pytest.MonkeyPatch, skew: timedelta) -> None:
    monkeypatch.setattr(leases, "utcnow", lambda: T0 + skew)


def test_skewed_hosts_agree_on_the_lease_by_the_databases_clock(
    engine: Engine, database_clock: list[datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    host_clock(monkeypatch, timedelta(hours=1))
    assert leases.acquire(engine, "beat", "a", LEASE)
    host_clock(monkeypatch, -timedelta(hours=1))
    database_clock[0] = T0 + timedelta(seconds=9)
    assert not leases.acquire(engine, "beat", "b", LEASE)
    assert leases.holder_of(engine, "beat") == "a"
    database_clock[0] = T0 + timedelta(seconds=11)  # a died: its lease ended 1 s ago
    assert leases.holder_of(engine, "beat") is None
    assert leases.acquire(engine, "beat", "b", LEASE)


def test_a_leader_on_a_skewed_host_records_by_the_databases_clock(
    engine: Engine, database_clock: list[datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    host_clock(monkeypatch, -timedelta(hours=1))
    assert leases.acquire(engine, "beat", "a", LEASE)
    database_clock[0] = T0 + timedelta(seconds=9)
    assert leases.record_run(engine, "beat", "a", "tick", T0, 1, task_id="t1")
    assert leases.unsent(engine) == {"tick": ("t1", T0 + timedelta(seconds=9))}
    database_clock[0] = T0 + timedelta(seconds=10)  # its lease ran out, whatever its host says
    assert not leases.record_run(engine, "beat", "a", "tick", T0, 2, task_id="t2")


def test_a_standby_takes_over_within_one_interval() -> None:
    for interval in (3.0, 60.0, 3600.0):
        lease = lease_seconds(interval)
        # The leader may die just after renewing; a standby polls every quarter lease.
        assert lease + lease / 4 < interval


def test_the_schedule_command_names_the_beat_that_sends(cli_env: dict[str, str]) -> None:
    engine = engine_for(cli_env["BATCHAPP_DATABASE_URL"])
    ensure_schema(engine)
    assert "no beat holds the lease" in run_cli("schedule", env=cli_env).stdout
    assert leases.acquire(engine, "beat", "host-7:4242", LEASE)

    assert "sent by beat host-7:4242" in run_cli("schedule", env=cli_env).stdout
    leases.release(engine, "beat", "host-7:4242")


def test_a_beat_stopped_inside_a_lease_call_does_not_wait_on_its_own_transaction() -> None:
    scheduler = LeaderScheduler(app, lazy=True)
    with scheduler.database() as engine:
        assert leases.acquire(engine, "beat", scheduler.holder, LEASE)
    scheduler.leading = True

    with scheduler.database() as engine, write_transaction(engine):
        # Beat's SIGTERM handler runs close() on top of the lease call it interrupted.
        started = time.monotonic()
        scheduler.close()
        took = time.monotonic() - started
        held_on = scheduler.leading

    assert took < 1.0, f"close() waited {took:.1f} s on its own transaction"
    assert held_on and leases.holder_of(engine, "beat") == scheduler.holder  # left to expire
    scheduler.close()  # outside a call, a clean stop gives the lease up
    assert leases.holder_of(engine, "beat") is None


@pytest.fixture
def beats(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[LeaderScheduler, LeaderScheduler, list[Any]]]:
    """Two beats on the settings' database, no lease held; sends captured, not published."""
    sends: list[Any] = []

    def publish(
        self: Any, entry: Any, producer: Any = None, advance: bool = True, **kw: Any
    ) -> Any:
        sends.append((entry.name, entry.options.get("task_id")))
        return SimpleNamespace(id=entry.options.get("task_id"))

    monkeypatch.setattr(Scheduler, "apply_async", publish)
    monkeypatch.setattr(Scheduler, "producer", None)  # no broker in this tier
    first, second = LeaderScheduler(app, lazy=True), LeaderScheduler(app, lazy=True)
    second.holder += "-standby"

    def clear() -> None:
        with first.database() as engine, write_transaction(engine) as connection:
            for table in (beat_leases, beat_sends):
                connection.execute(table.delete())

    clear()
    for beat in (first, second):
        beat.setup_schedule()
    yield first, second, sends
    clear()  # the other tests' beats share this database


def test_a_tick_recorded_by_a_leader_killed_before_its_send_is_sent_by_the_next(
    beats: tuple[LeaderScheduler, LeaderScheduler, list[Any]],
) -> None:
    leader, standby, sends = beats
    leader._check_lease()
    leader.reserve(leader.schedule["calculate-sum"])  # recorded; killed before apply_async
    with leader.database() as engine:
        ((tick_id, _),) = [leases.unsent(engine)["calculate-sum"]]
        leases.release(engine, "beat", leader.holder)  # its lease ran out

    standby._check_lease()

    assert standby.leading
    assert sends == [("calculate-sum", tick_id)]  # the same task id: it runs once
    with standby.database() as engine:
        assert leases.unsent(engine) == {}


def test_a_sent_tick_is_not_sent_again_and_an_expired_one_is_dropped(
    beats: tuple[LeaderScheduler, LeaderScheduler, list[Any]],
) -> None:
    leader, standby, sends = beats
    leader._check_lease()
    entry = leader.schedule["calculate-sum"]
    leader.reserve(entry)  # as beat's tick does: reserve, then send
    leader.apply_async(entry)
    leader.reserve(leader.schedule["sales-report"])  # killed before this send ...
    with leader.database() as engine:
        with write_transaction(engine) as connection:
            # ... longer ago than the tick's expiry: it would be discarded on arrival.
            connection.execute(update(beat_sends).values(recorded_at=datetime(2000, 1, 1)))
        leases.release(engine, "beat", leader.holder)

    standby._check_lease()

    assert [name for name, _ in sends] == ["calculate-sum"]
    with standby.database() as engine:
        assert leases.unsent(engine) == {}


def test_a_tick_that_arrives_twice_starts_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "publish_chunks", lambda *args, **kwargs: None)
    tick = str(uuid.uuid4())

    first = tasks.run_periodic.apply(("report",), task_id=tick).get()
    again = tasks.run_periodic.apply(("report",), task_id=tick).get()
    other = tasks.run_periodic.apply(("report",), task_id=str(uuid.uuid4())).get()

    assert first == again and first.endswith(": running")
    assert other != first and other.endswith(": skipped")


def test_a_beat_on_a_skewed_host_schedules_and_records_on_the_databases_clock(
    beats: tuple[LeaderScheduler, LeaderScheduler, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, _, _ = beats
    clocks: list[datetime] = []

    def publish(self: Any, entry: Any, producer: Any = None, **kw: Any) -> Any:
        clocks.append(self.app.now())  # what Celery counts a tick's expires from
        return SimpleNamespace(id=entry.options.get("task_id"))

    monkeypatch.setattr(Scheduler, "apply_async", publish)
    monkeypatch.setattr(leases, "clock_offset", lambda engine: timedelta(seconds=-20))
    with leader.database() as engine, write_transaction(engine) as connection:
        connection.execute(beat_entries.delete())
    for entry in leader.schedule.values():
        entry.last_run_at = datetime(2000, 1, 1, tzinfo=UTC)  # all due
    leader.tick()  # this host runs 20 s ahead of the database

    database_now = datetime.now(UTC) - timedelta(seconds=20)
    assert len(clocks) == 1 and abs(clocks[0] - database_now) < timedelta(seconds=2)
    with leader.database() as engine:
        ((last_run_at, _),) = leases.recorded_runs(engine).values()
    assert abs(last_run_at.replace(tzinfo=UTC) - database_now) < timedelta(seconds=2)
    assert abs(app.now() - datetime.now(UTC)) < timedelta(seconds=2)  # only inside its tick
