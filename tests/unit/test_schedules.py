"""Schedules: every/cron checked at once, entries stored on SQLite, jobs that declare one, the
leading beat picking a change up, and `batchapp schedule add|pause|resume|remove` refusing bad
input with one line and nothing stored.

tests/integration/test_schedules.py runs real beats and workers on them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from batchapp import Int, Job, every, job, service
from batchapp.beat import leases, stored
from batchapp.beat import scheduler as scheduler_module
from batchapp.beat.entries import code_entries, declared_entries
from batchapp.beat.scheduler import LEASE, LeaderScheduler
from batchapp.beat.stored import ScheduleNameError
from batchapp.beat.timing import Cron, Every, ScheduleError, cron
from batchapp.celery import app, settings
from batchapp.cli.commands import main
from batchapp.jobs import JobContext
from batchapp.jobs.periodic import SalesReport
from batchapp.runtime import job_context
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema, schedules
from tests.unit.conftest import RUN_DATA_DIR

T0 = datetime(2026, 12, 1, 3, 0, 0)


@pytest.fixture
def engine() -> Engine:
    engine = engine_for(f"sqlite:///{RUN_DATA_DIR / f'schedules-{time.monotonic_ns()}.sqlite'}")
    ensure_schema(engine)
    return engine


# --- every and cron -------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "seconds"), [(60, 60.0), ("2.5", 2.5), (" 1 ", 1.0)])
def test_every_takes_seconds_as_a_number_or_text(given: Any, seconds: float) -> None:
    assert every(given) == Every(seconds)
    assert every(given).celery() == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (0, "between 1 and"),
        ("-5", "between 1 and"),
        (0.5, "between 1 and"),
        ("abc", "expected a number of seconds, got 'abc'"),
        ("nan", "expected a number of seconds"),
        ("inf", "expected a number of seconds"),
        (True, "expected a number of seconds"),
        (None, "expected a number of seconds"),
    ],
)
def test_a_bad_interval_is_refused_with_one_line(given: Any, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        every(given)


def test_cron_has_five_fields_and_runs_in_the_apps_timezone() -> None:
    nightly = cron("0  3 * * *")
    assert nightly == Cron("0 3 * * *")
    schedule = nightly.celery()
    schedule.app = app  # what beat does with every entry's schedule
    schedule.nowfun = lambda: datetime(2026, 12, 1, 17, 30, tzinfo=UTC)  # 02:30 in Seoul
    # 03:00 in Seoul is 18:00 UTC the day before: half an hour from now.
    remaining = schedule.remaining_estimate(datetime(2026, 12, 1, 17, 0, tzinfo=UTC))
    assert remaining == timedelta(minutes=30)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 2 3", "expected 5 fields"),
        ("61 * * * *", "bad minute '61'"),
        ("* 24 * * *", "bad hour '24'"),
        ("* * * 13 *", "bad month_of_year '13'"),
        ("* * * * 8", "bad day_of_week '8'"),
        ("*/0 * * * *", "bad minute '\\*/0'"),
        ("0 0 31 2 *", "never occurs"),
        (5, "expected text"),
    ],
)
def test_a_bad_cron_is_refused_naming_the_field(expression: Any, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        cron(expression)


# --- jobs that declare a schedule -----------------------------------------------------------


@job("acme.ticker", params={"n": Int(min=1)}, schedule=every(30), schedule_params={"n": 3},
     register=False)  # fmt: skip
def ticker(spec: dict[str, Any], params: dict[str, Any]) -> int:
    return int(params["n"])


class Nightly(SalesReport):
    name = "acme.nightly"
    schedule = cron("0 3 * * *")


def ctx() -> JobContext:
    return JobContext(settings=settings, engine=engine_for(settings.database_url))


def test_a_declared_schedule_becomes_an_entry_named_after_its_job() -> None:
    entries = declared_entries({"acme.ticker": ticker, "acme.nightly": Nightly()}, ctx())

    assert entries["acme.ticker"]["task"] == "batchapp.tasks.run_periodic"
    assert entries["acme.ticker"]["args"] == ("acme.ticker",)
    assert entries["acme.ticker"]["kwargs"] == {"n": 3}
    assert entries["acme.ticker"]["schedule"] == timedelta(seconds=30)
    assert entries["acme.ticker"]["options"] == {"queue": "batchapp.periodic", "expires": 30.0}
    assert repr(entries["acme.nightly"]["schedule"]).startswith("<crontab: 0 3 * * *")


def test_declared_params_are_checked_by_the_job() -> None:
    @job("acme.bad", params={"n": Int(min=1)}, schedule=every(5), schedule_params={"n": 0},
         register=False)  # fmt: skip
    def bad(spec: dict[str, Any], params: dict[str, Any]) -> None:
        return None

    with pytest.raises(ScheduleError, match=r"job acme\.bad: bad schedule_params: .*n must be"):
        declared_entries({"acme.bad": bad}, ctx())


def test_a_job_may_not_take_the_name_of_an_entry_in_code() -> None:
    class Reconcile(SalesReport):
        name = "reconcile"
        schedule = every(10)

    with pytest.raises(ScheduleError, match="job reconcile declares a schedule, but beat"):
        code_entries(app.conf.beat_schedule, {"reconcile": Reconcile()}, ctx())


def test_a_schedule_that_is_not_every_or_cron_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match=r"acme\.typo: schedule must be every"):
        job("acme.typo", schedule="every minute", register=False)(  # type: ignore[arg-type]
            lambda spec, params: None
        )
    with pytest.raises(TypeError, match=r"acme\.typo2: schedule_params must be a dict"):

        class Typo(SalesReport):
            name = "acme.typo2"
            schedule = every(5)
            schedule_params: ClassVar[Any] = ["n"]


def test_beat_stops_with_one_line_on_a_declared_schedule_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @job("acme.zero", params={"n": Int(min=1)}, schedule=every(5), schedule_params={"n": 0},
         register=False)  # fmt: skip
    def zero(spec: dict[str, Any], params: dict[str, Any]) -> None:
        return None

    monkeypatch.setattr(scheduler_module, "JOBS", {"acme.zero": zero})
    with pytest.raises(SystemExit) as stopped:
        LeaderScheduler(app, lazy=True).setup_schedule()

    assert str(stopped.value).startswith("batchapp: job acme.zero: bad schedule_params: ")


def test_jobs_without_a_schedule_declare_nothing() -> None:
    assert Job.schedule is None
    assert declared_entries({"report": SalesReport()}, ctx()) == {}


# --- the stored entries ---------------------------------------------------------------------


def test_an_entry_is_stored_listed_paused_resumed_and_removed(engine: Engine) -> None:
    added = stored.add(engine, "nightly-sum", "parallel_sum", {"n": "10"}, cron("0 3 * * *"), T0)
    assert stored.entries(engine) == [added]
    assert (added.since, added.paused, added.params) == (T0, False, {"n": "10"})

    paused = stored.set_paused(engine, "nightly-sum", True, T0 + timedelta(hours=1))
    assert (paused.paused, paused.since) == (True, T0)  # pausing keeps the start
    resumed = stored.set_paused(engine, "nightly-sum", False, T0 + timedelta(hours=2))
    assert (resumed.paused, resumed.since) == (False, T0 + timedelta(hours=2))
    assert stored.entries(engine) == [resumed]

    stored.remove(engine, "nightly-sum")
    assert stored.entries(engine) == []


def test_every_change_moves_the_counter_and_a_no_op_does_not(engine: Engine) -> None:
    versions = [stored.version(engine)]
    stored.add(engine, "a", "report", {}, every(5), T0)
    versions.append(stored.version(engine))
    stored.set_paused(engine, "a", True)
    versions.append(stored.version(engine))
    stored.set_paused(engine, "a", True)  # already paused
    versions.append(stored.version(engine))
    stored.remove(engine, "a")
    versions.append(stored.version(engine))

    assert versions == [0, 1, 2, 2, 3]


def test_a_taken_or_unknown_name_is_refused_and_changes_nothing(engine: Engine) -> None:
    stored.add(engine, "a", "report", {}, every(5), T0)
    before = (stored.entries(engine), stored.version(engine))

    with pytest.raises(ScheduleNameError, match="a schedule named 'a' exists already"):
        stored.add(engine, "a", "cleanup", {}, every(9), T0)
    for change in (
        lambda: stored.set_paused(engine, "b", True),
        lambda: stored.set_paused(engine, "b", False),
        lambda: stored.remove(engine, "b"),
    ):
        with pytest.raises(ScheduleNameError, match="no stored schedule named 'b'"):
            change()
    assert (stored.entries(engine), stored.version(engine)) == before


@pytest.mark.parametrize("name", ["", "two words", "tab\there", "x" * 201])
def test_a_malformed_name_is_refused(engine: Engine, name: str) -> None:
    with pytest.raises(ScheduleNameError):
        stored.add(engine, name, "report", {}, every(5), T0)
    assert stored.entries(engine) == []


def test_two_adds_of_one_name_at_once_store_one_entry(engine: Engine) -> None:
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def add(job: str) -> None:
        start.wait()
        try:
            stored.add(engine, "race", job, {}, every(5), T0)
            outcomes.append("added")
        except ScheduleNameError:
            outcomes.append("refused")

    threads = [threading.Thread(target=add, args=(job,)) for job in ("report", "cleanup")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["added", "refused"]
    assert [entry.name for entry in stored.entries(engine)] == ["race"]
    assert stored.version(engine) == 1


def test_removing_an_entry_forgets_its_last_run(engine: Engine) -> None:
    stored.add(engine, "a", "report", {}, every(5), T0)
    assert leases.acquire(engine, LEASE, "me", timedelta(seconds=10), now=T0)
    assert leases.record_run(engine, LEASE, "me", "a", T0, 4, now=T0)

    stored.remove(engine, "a")

    assert "a" not in leases.recorded_runs(engine)


# --- the leading beat -----------------------------------------------------------------------


@pytest.fixture
def leader() -> Iterator[LeaderScheduler]:
    """A scheduler leading on the unit tier's ledger, its stored entries cleared first."""
    scheduler = LeaderScheduler(app, lazy=True)
    scheduler.setup_schedule()
    with scheduler.database() as engine:
        for entry in stored.entries(engine):
            stored.remove(engine, entry.name)
        assert leases.acquire(engine, LEASE, scheduler.holder, timedelta(seconds=30))
    scheduler._take_over()
    yield scheduler
    with scheduler.database() as engine:
        leases.release(engine, LEASE, scheduler.holder)


def test_the_leader_loads_added_entries_and_drops_paused_and_removed_ones(
    leader: LeaderScheduler,
) -> None:
    engine = engine_for(settings.database_url)
    name = f"s-{uuid.uuid4().hex[:6]}"
    stored.add(engine, name, "parallel_sum", {"n": "10"}, every(2))
    leader._pick_up_changes()
    entry = leader.schedule[name]
    assert (entry.task, entry.args, entry.kwargs) == (
        "batchapp.tasks.run_periodic",
        ("parallel_sum",),
        {"n": "10"},
    )
    assert entry.options["queue"] == "batchapp.periodic"
    assert "confirm_timeout" in entry.options

    stored.set_paused(engine, name, True)
    leader._pick_up_changes()
    assert name not in leader.schedule
    stored.set_paused(engine, name, False)
    leader._pick_up_changes()
    assert name in leader.schedule
    stored.remove(engine, name)
    leader._pick_up_changes()
    assert name not in leader.schedule
    assert {"calculate-sum", "reconcile", "cleanup", "sales-report"} <= set(leader.schedule)


def test_a_taking_over_leader_starts_a_stored_entry_from_its_recorded_run(
    leader: LeaderScheduler,
) -> None:
    engine = engine_for(settings.database_url)
    since = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    stored.add(engine, "ticks", "report", {}, every(60), since)
    ran = since + timedelta(minutes=3)
    assert leases.record_run(engine, LEASE, leader.holder, "ticks", ran, 3)

    leader._take_over()

    entry = leader.schedule["ticks"]
    assert (entry.last_run_at, entry.total_run_count) == (ran.replace(tzinfo=UTC), 3)


def test_a_hand_edited_row_that_cannot_run_is_skipped_not_fatal(
    leader: LeaderScheduler,
) -> None:
    engine = engine_for(settings.database_url)
    stored.add(engine, "edited", "report", {}, every(5))
    stored.add(engine, "fine", "report", {}, every(5))
    with engine.begin() as connection:
        connection.execute(
            schedules.update().where(schedules.c.name == "edited").values(every_s=0.0)
        )
    stored.set_paused(engine, "fine", True)  # the counter moves
    stored.set_paused(engine, "fine", False)

    leader._pick_up_changes()

    assert "edited" not in leader.schedule
    assert "fine" in leader.schedule


def test_a_resumed_entry_runs_one_period_after_resuming_not_at_once(
    leader: LeaderScheduler,
) -> None:
    engine = engine_for(settings.database_url)
    long_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=3)
    stored.add(engine, "paused-long", "report", {}, every(60), long_ago)
    assert leases.record_run(engine, LEASE, leader.holder, "paused-long", long_ago, 1)
    stored.set_paused(engine, "paused-long", True)
    stored.set_paused(engine, "paused-long", False)

    leader._pick_up_changes()

    due, _ = leader.is_due(leader.schedule["paused-long"])
    assert not due


# --- the command ----------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["schedule", *args], prog_name="batchapp")


def stored_now() -> list[stored.StoredEntry]:
    return stored.entries(engine_for(settings.database_url))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "x", "parallel_sum", "n=1", "--every", "0"], "every: seconds must be between"),
        (["add", "x", "parallel_sum", "n=1", "--every", "-1"], "every: seconds must be between"),
        (["add", "x", "parallel_sum", "n=1", "--every", "soon"], "expected a number of seconds"),
        (["add", "x", "parallel_sum", "n=1"], "give one of --every SECONDS and --cron"),
        (
            ["add", "x", "parallel_sum", "n=1", "--every", "5", "--cron", "* * * * *"],
            "give one of --every SECONDS and --cron",
        ),
        (["add", "x", "parallel_sum", "n=1", "--cron", "60 * * * *"], "bad minute '60'"),
        (["add", "x", "parallel_sum", "n=1", "--cron", "* * *"], "expected 5 fields"),
        (["add", "x", "nosuch", "--every", "5"], "unknown job 'nosuch'"),
        (["add", "x", "parallel_sum", "n=many", "--every", "5"], "n must be an integer"),
        (["add", "x", "parallel_sum", "m=1", "--every", "5"], "unknown parameter 'm'"),
        (["add", "x", "parallel_sum", "n", "--every", "5"], "malformed parameter 'n'"),
        (["add", "reconcile", "report", "--every", "5"], "'reconcile' names an entry in code"),
        (["add", "a b", "report", "--every", "5"], "must be printable, without blanks"),
        (["pause", "nosuch"], "no stored schedule named 'nosuch'"),
        (["resume", "nosuch"], "no stored schedule named 'nosuch'"),
        (["remove", "nosuch"], "no stored schedule named 'nosuch'"),
        (["pause", "cleanup"], "'cleanup' is an entry in code"),
    ],
)
def test_bad_schedule_input_is_one_line_and_stores_nothing(args: list[str], message: str) -> None:
    before = stored_now()
    done = invoke(*args)

    [line] = done.output.strip().splitlines()
    assert done.exit_code != 0
    assert line.startswith("Error: ")
    assert message in line
    assert stored_now() == before


def test_a_duplicate_name_is_refused_and_the_first_entry_kept() -> None:
    name = f"dup-{uuid.uuid4().hex[:6]}"
    assert invoke("add", name, "parallel_sum", "n=5", "--every", "60").exit_code == 0
    done = invoke("add", name, "report", "--cron", "0 3 * * *")

    assert done.exit_code == 1
    assert done.output.strip() == f"Error: a schedule named '{name}' exists already"
    [entry] = [e for e in stored_now() if e.name == name]
    assert (entry.job, entry.params, entry.schedule) == ("parallel_sum", {"n": "5"}, Every(60))
    invoke("remove", name)


def test_the_listing_shows_source_state_and_next_run() -> None:
    name = f"list-{uuid.uuid4().hex[:6]}"
    added = invoke("add", name, "parallel_sum", "n=7", "--cron", "0 3 * * *")
    assert added.exit_code == 0, added.output
    assert added.output.startswith(f"added {name}: parallel_sum n=7, cron 0 3 * * *, next run ")
    invoke("pause", name)

    listed = invoke().output
    [line] = [row for row in listed.splitlines() if row.startswith(name)]
    assert line.split()[1:] == [
        "stored",
        "batchapp.tasks.run_periodic",
        '["parallel_sum"]',
        "n=7",
        "cron",
        "0",
        "3",
        "*",
        "*",
        "*",
        "paused",
        "-",
    ]
    assert "SOURCE" in listed and "STATE" in listed
    resumed = invoke("resume", name)
    assert " 03:00:00 Asia/Seoul" in resumed.output
    assert invoke("remove", name).output.strip() == f"removed {name}"


def test_the_listing_shows_a_next_run_on_this_hosts_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = job_context().engine
    behind = timedelta(hours=1)  # the database's clock, an hour behind this host's
    name = f"skew-{uuid.uuid4().hex[:6]}"
    added_at = datetime.now(UTC).replace(tzinfo=None) - behind
    stored.add(engine, name, "parallel_sum", {"n": "5"}, Every(60), now=added_at)
    monkeypatch.setattr(leases, "clock_offset", lambda engine: -behind)
    try:
        entries, _ = service.schedule()
    finally:
        stored.remove(engine, name)

    [entry] = [e for e in entries if e.name == name]
    assert entry.next_run is not None
    due_in = (entry.next_run - datetime.now(UTC)).total_seconds()
    assert 50 < due_in <= 61, due_in  # a minute after it was added, not overdue
