"""What the ``batchapp`` command (and any other front end) does to jobs, in one place.

Front ends call these and render what they return; they import neither tasks nor the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import maybe_schedule
from sqlalchemy import text
from sqlalchemy.engine import make_url

from batchapp import ledger
from batchapp.beat import leases, stored
from batchapp.beat.entries import CODE, STORED, code_entries, stored_entry
from batchapp.beat.scheduler import LEASE
from batchapp.beat.stored import ScheduleNameError, StoredEntry
from batchapp.beat.timing import Schedule, ScheduleError, cron, every
from batchapp.broker import dead_letters, depths, queues
from batchapp.broker.dead_letters import DEAD_LETTER_QUEUE, DeadLetter
from batchapp.broker.dead_letters import REASONS as DEAD_LETTER_REASONS
from batchapp.broker.depths import QueueDepth
from batchapp.celery import app, settings
from batchapp.jobs import JOBS, JobContext, ParamError
from batchapp.jobs.params import parse_assignments
from batchapp.jobs.sales_csv import (
    SampleStats,
    SampleTargetError,
    check_sample_target,
    write_sample,
)
from batchapp.ledger import (
    FAILED,
    SUCCEEDED,
    ExecutionView,
    JobStateError,
    JobView,
    UnknownJobError,
)
from batchapp.ledger import metrics as ledger_metrics
from batchapp.runtime import job_context
from batchapp.settings import mask_url
from batchapp.storage.tables import ensure_schema
from batchapp.tasks import calculate_sum, chunk_queue, retry_job, run_chunk, submit_job

# What a user got wrong (a parameter, a job id, a state, a file), or a wait that ran out:
# one line, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    ParamError,
    UnknownJobError,
    JobStateError,
    SampleTargetError,
    ScheduleError,
    ScheduleNameError,
    TimeoutError,
)

__all__ = [
    "DEAD_LETTER_QUEUE",
    "DEAD_LETTER_REASONS",
    "FAILED",
    "SUCCEEDED",
    "USER_ERRORS",
    "WORK_QUEUES",
    "DeadLetter",
    "ExecutionView",
    "JobContext",
    "JobReport",
    "JobStateError",
    "JobType",
    "JobView",
    "LedgerFigures",
    "ParamError",
    "QueueDepth",
    "SampleStats",
    "ScheduleEntry",
    "ScheduleNameError",
    "UnknownJobError",
    "WorkerHealth",
    "beat_leader",
    "broker_shown",
    "call_calculate_sum",
    "cancel_job",
    "check_submit",
    "chunk_errors",
    "chunks_in_flight",
    "database_shown",
    "dead_letters_peek",
    "dead_letters_purge",
    "failed_chunks",
    "get_job",
    "job_chunks",
    "job_context",
    "job_executions",
    "job_rejects",
    "job_report",
    "job_statuses",
    "job_types",
    "ledger_figures",
    "ledger_ping",
    "parse_assignments",
    "queue_depths",
    "recent_jobs",
    "retry_job",
    "schedule",
    "schedule_add",
    "schedule_pause",
    "schedule_remove",
    "schedule_resume",
    "settings",
    "sqlite_file",
    "submit_job",
    "timezone",
    "wait_for_job",
    "workers",
    "write_sample_csv",
]


def timezone() -> ZoneInfo:
    """The zone times are shown in (``BATCHAPP_TIMEZONE``)."""
    return job_context().tz


@dataclass(frozen=True)
class JobType:
    """A job one can submit: its name, what it does, its parameters, and where it came from."""

    name: str
    summary: str
    params_help: str
    queue: str
    origin: str

    def as_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "summary": self.summary,
            "params": self.params_help,
            "queue": self.queue,
            "origin": self.origin,
        }


def job_types() -> list[JobType]:
    """Every job type this process knows (built-in and discovered), by name."""
    return [
        JobType(
            name,
            str(getattr(job, "summary", "")),
            str(getattr(job, "params_help", "")),
            job.queue,
            JOBS.origin(name),
        )
        for name, job in sorted(JOBS.items())
    ]


def check_submit(job: str, params: dict[str, str]) -> None:
    """:class:`ParamError` unless ``job`` exists and takes ``params`` (as submit checks them)."""
    JOBS.get_job(job).parse_params(params, job_context())


def get_job(job_id: str) -> JobView:
    return ledger.get(job_context(), job_id)


def job_executions(job_id: str) -> list[ExecutionView]:
    """The job's runs (its submit, then each retry), first first; see ledger.executions."""
    return ledger.executions(job_context(), job_id)


def failed_chunks(job_id: str) -> list[Any]:
    """The job's failed chunks (index, attempts, error)."""
    return [c for c in ledger.chunk_rows(job_context(), job_id) if c.status == ledger.FAILED]


def recent_jobs(
    limit: int, *, offset: int = 0, status: str | None = None, name: str | None = None
) -> list[JobView]:
    """The newest jobs first, optionally only those with ``status`` and job ``name``."""
    return list(ledger.recent(job_context(), limit, offset=offset, status=status, name=name))


@dataclass(frozen=True)
class JobReport:
    """One job with its runs and failed chunks: what ``batchapp status`` shows."""

    job: JobView
    executions: list[ExecutionView]
    failed: list[Any]

    def as_json(self, tz: ZoneInfo) -> dict[str, Any]:
        """``batchapp status --json`` and the web API's job object."""
        runs = [run.as_json(tz) for run in self.executions]
        return self.job.as_json(tz) | {"executions": runs} | ledger.failed_chunks_json(self.failed)


def job_report(job_id: str) -> JobReport:
    return JobReport(get_job(job_id), job_executions(job_id), failed_chunks(job_id))


def job_chunks(job_id: str) -> list[Any]:
    """The job's chunks in order (index, status, attempts, redelivered, deliveries, items,
    error), without their outputs."""
    get_job(job_id)
    return ledger.chunk_rows(job_context(), job_id)


def chunk_errors(job_id: str) -> list[tuple[str, int]]:
    """The job's failed chunks grouped by error: (error, chunks), most first."""
    return ledger.chunk_errors(job_context(), job_id)


def job_rejects(job_id: str, limit: int, offset: int = 0) -> list[Any]:
    """A CSV import's rejected lines (line, reason, raw, first_line), by line."""
    return ledger.rejects(job_context(), job_id, limit, offset)


def job_statuses() -> tuple[str, ...]:
    """The states a job can be in, for filters."""
    return (ledger.RUNNING, SUCCEEDED, FAILED, ledger.CANCELLED, ledger.SKIPPED)


@dataclass(frozen=True)
class WorkerHealth:
    """A worker as ``celery inspect`` sees it: the queues it serves, what it runs and holds."""

    name: str
    queues: list[str]
    active: int
    reserved: int

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queues": self.queues,
            "active": self.active,
            "reserved": self.reserved,
        }


def workers(timeout: float = 1.0) -> list[WorkerHealth]:
    """The workers that answer a ``ping`` within ``timeout`` seconds, by name."""
    inspect = app.control.inspect(timeout=timeout)
    queues = inspect.active_queues() or {}
    active = inspect.active() or {}
    reserved = inspect.reserved() or {}
    return [
        WorkerHealth(
            name,
            sorted(q.get("name", "") for q in queues.get(name) or []),
            len(active.get(name) or []),
            len(reserved.get(name) or []),
        )
        for name in sorted(set(queues) | set(active) | set(reserved))
    ]


def cancel_job(job_id: str) -> JobView:
    """Stop a running job; see :func:`ledger.cancel`."""
    return ledger.cancel(job_context(), job_id)


def wait_for_job(
    view: JobView,
    timeout: float | None,
    on_progress: Callable[[JobView], None] | None = None,
) -> JobView:
    """Wait until the job finishes; an error if nothing is working on it (see ledger.wait)."""
    return ledger.wait(
        job_context(), view.id, timeout=timeout, in_flight=chunks_in_flight, on_progress=on_progress
    )


def chunks_in_flight(view: JobView) -> bool:
    """Whether a chunk of the job may be queued or running: its queue has a message ready, a
    worker holds one of its chunks, or the queue has more consumers (one per worker) than
    workers that answered: a paused or overloaded worker may hold the job's chunks unacked,
    and RabbitMQ tells a client only the ready count. If the broker or the workers cannot
    tell, it may be."""
    queue = chunk_queue(view.name)
    try:
        with app.connection_for_write() as connection:
            depth = depths.passive_declare(connection.default_channel, queue)
        # No such queue: nothing is in it.
        ready, consumers = (depth.ready, depth.consumers) if depth else (0, 0)
        if ready:
            return True
        if not consumers:
            return False  # no consumer holds an unacknowledged message either
        inspect = app.control.inspect(timeout=1.0)
        held = [*(inspect.active() or {}).values(), *(inspect.reserved() or {}).values()]
        if any(
            task.get("name") == run_chunk.name and view.id in str(task.get("args"))
            for tasks in held
            for task in tasks
        ):
            return True
        consuming = [
            worker
            for worker, served in (inspect.active_queues() or {}).items()
            if any(q.get("name") == queue for q in served)
        ]
    except Exception:
        return True
    return len(consuming) < int(consumers)


@dataclass(frozen=True)
class ScheduleEntry:
    """A beat entry: from code (batchapp's own or a job's declared one) or stored by operators;
    ``next_run`` is None while it is paused."""

    name: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    schedule: str
    next_run: datetime | None
    source: str = CODE
    paused: bool = False

    def as_json(self, tz: ZoneInfo) -> dict[str, Any]:
        next_run = self.next_run
        return {
            "name": self.name,
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "schedule": self.schedule,
            "source": self.source,
            "paused": self.paused,
            "next_run": None
            if next_run is None
            else next_run.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
            "timezone": tz.key,
        }


def schedule() -> tuple[list[ScheduleEntry], str | None]:
    """Each beat entry with its next run time, and the beat that holds the lease (None: no beat
    is running). Entries in code are shown as if beat started now; stored ones from their last
    recorded run (or from when they were added or resumed)."""
    now = datetime.now(UTC)
    entries = []
    for name, entry in _code_schedule().items():
        sched = maybe_schedule(entry["schedule"], app=app)
        next_run = _next_run(sched, now, now)
        args = list(entry.get("args", ()))
        kwargs = dict(entry.get("kwargs", {}))
        entries.append(ScheduleEntry(name, entry["task"], args, kwargs, describe(sched), next_run))
    engine = job_context().engine
    ensure_schema(engine)
    runs = leases.recorded_runs(engine)
    offset = leases.clock_offset(engine)  # runs are on the database's clock; shown on this host's
    for row in stored.entries(engine):
        last_run = max(runs.get(row.name, (row.since, 0))[0], row.since) - offset
        since = last_run.replace(tzinfo=UTC)
        entries.append(_stored_view(row, None if row.paused else since))
    return entries, leases.holder_of(engine, LEASE)


def schedule_add(
    name: str,
    job: str,
    params: dict[str, str],
    every_s: str | None = None,
    cron_expression: str | None = None,
) -> ScheduleEntry:
    """Store an entry running ``job`` with ``params`` every ``every_s`` seconds or on
    ``cron_expression``; each is checked first (the parameters by the job, as at submit)."""
    stored.check_name(name)
    if (every_s is None) == (cron_expression is None):
        raise ScheduleError("give one of --every SECONDS and --cron 'M H DOM MON DOW'")
    when: Schedule = every(every_s) if every_s is not None else cron(cron_expression)
    checked = JOBS.get_job(job)
    if name in _code_schedule():
        raise ScheduleNameError(f"{name!r} names an entry in code; choose another name")
    checked.parse_params(params, job_context())
    row = stored.add(job_context().engine, name, job, params, when)
    return _stored_view(row, row.since.replace(tzinfo=UTC))


def schedule_pause(name: str) -> ScheduleEntry:
    """Stop entry ``name`` from running until it is resumed."""
    row = stored.set_paused(job_context().engine, _stored_name(name), True)
    return _stored_view(row, None)


def schedule_resume(name: str) -> ScheduleEntry:
    """Run entry ``name`` again, one period from now (skipped runs are not caught up)."""
    row = stored.set_paused(job_context().engine, _stored_name(name), False)
    return _stored_view(row, row.since.replace(tzinfo=UTC))


def schedule_remove(name: str) -> None:
    stored.remove(job_context().engine, _stored_name(name))


def _stored_name(name: str) -> str:
    if name in _code_schedule():
        raise ScheduleNameError(f"{name!r} is an entry in code: only stored entries can change")
    return name


def _code_schedule() -> dict[str, dict[str, Any]]:
    return code_entries(app.conf.beat_schedule, JOBS, job_context())


def _stored_view(row: StoredEntry, last_run: datetime | None) -> ScheduleEntry:
    entry = stored_entry(row)
    sched = maybe_schedule(entry["schedule"], app=app)
    next_run = None if last_run is None else _next_run(sched, last_run, datetime.now(UTC))
    return ScheduleEntry(
        row.name,
        entry["task"],
        list(entry["args"]),
        entry["kwargs"],
        describe(sched),
        next_run,
        STORED,
        row.paused,
    )


def _next_run(sched: Any, last_run: datetime, now: datetime) -> datetime:
    """When ``sched`` runs next after ``last_run``; an overdue run is due now."""
    remaining: timedelta = max(sched.remaining_estimate(last_run), timedelta(0))
    # Rounded to the second: the estimate lands a few microseconds early.
    return (now + remaining + timedelta(seconds=0.5)).replace(microsecond=0)


def describe(sched: Any) -> str:
    """'cron M H DoM MoY DoW' or 'every N s', from the schedule's own text."""
    text = repr(sched)
    if text.startswith("<crontab: "):
        # Celery writes a crontab as '<crontab: 0 * * * * (m/h/dM/MY/d)>'.
        return "cron " + text.removeprefix("<crontab: ").rsplit(" (", 1)[0]
    return f"every {sched.run_every.total_seconds():g} s"


def dead_letters_peek(limit: int) -> tuple[int, list[DeadLetter]]:
    """How many dead letters there are, and the oldest ``limit`` of them."""
    return dead_letters.peek(app, limit, settings.broker_timeout)


def dead_letters_purge() -> int:
    return dead_letters.purge(app, settings.broker_timeout)


# The queues workers consume, by kind of work (the dead-letter queue is read apart).
WORK_QUEUES = queues.ALL
LedgerFigures = ledger_metrics.LedgerFigures


def queue_depths(timeout: float) -> dict[str, QueueDepth]:
    """Ready messages and consumers of the work queues and of the dead-letter queue, as the
    broker has them now (a queue not declared yet is missing); gives up after ``timeout`` s."""
    return depths.queue_depths(app, (*WORK_QUEUES, DEAD_LETTER_QUEUE), timeout)


def ledger_figures(ctx: JobContext | None = None) -> LedgerFigures:
    """Jobs, chunks and items per job name, and each name's last success; see ledger.metrics."""
    return ledger_metrics.figures(ctx or job_context())


def ledger_ping() -> None:
    """Raises the database's error unless the ledger answers a query."""
    with job_context().engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def beat_leader(ctx: JobContext | None = None) -> str | None:
    """The beat that holds the lease now (None: no beat is sending ticks)."""
    engine = (ctx or job_context()).engine
    ensure_schema(engine)
    return leases.holder_of(engine, LEASE)


def call_calculate_sum(n: int, timeout: float) -> int:
    """``calculate_sum(n)`` run by a worker, as a caller runs it."""
    return int(calculate_sum.delay(n).get(timeout=timeout))


def write_sample_csv(
    file: Path, rows: int, bad: float, seed: int, *, force: bool = False
) -> tuple[Path, SampleStats]:
    """Write a sample sales CSV to ``file`` (relative to the data folder); an existing file is
    overwritten only if a sample (or with ``force``), and batchapp's databases never are."""
    target = file if file.is_absolute() else settings.data_dir / file
    check_sample_target(target, database_files(), force=force)
    return target, write_sample(target, rows, bad, seed)


def database_files() -> list[Path]:
    """The files batchapp keeps its state in: the ledger, the results, beat's schedule."""
    urls = (settings.database_url, settings.result_backend.removeprefix("db+"))
    files = [sqlite_file(url) for url in urls if url.startswith("sqlite:")]
    return [settings.data_dir / "celerybeat-schedule", *(f for f in files if f is not None)]


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).absolute()


def broker_shown() -> str:
    """The broker URL with its password masked."""
    return mask_url(settings.broker_url)


def database_shown() -> str:
    """The database URL with its password masked."""
    return make_url(settings.database_url).render_as_string(hide_password=True)
