"""What the ``batchapp`` command (and any other front end) does to jobs, in one place.

Front ends call these and render what they return; they import neither tasks nor the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from amqp.exceptions import ChannelError
from celery.schedules import maybe_schedule

from batchapp import ledger
from batchapp.beat import leases
from batchapp.beat.scheduler import LEASE
from batchapp.broker import dead_letters
from batchapp.broker.dead_letters import DEAD_LETTER_QUEUE, DeadLetter
from batchapp.broker.dead_letters import REASONS as DEAD_LETTER_REASONS
from batchapp.celery import app, settings
from batchapp.ledger import FAILED, SUCCEEDED, JobView
from batchapp.runtime import job_context
from batchapp.storage.tables import ensure_schema
from batchapp.tasks import chunk_queue, retry_job, run_chunk, submit_job

__all__ = [
    "DEAD_LETTER_QUEUE",
    "DEAD_LETTER_REASONS",
    "FAILED",
    "SUCCEEDED",
    "DeadLetter",
    "JobView",
    "ScheduleEntry",
    "cancel_job",
    "chunks_in_flight",
    "dead_letters_peek",
    "dead_letters_purge",
    "failed_chunks",
    "get_job",
    "job_context",
    "recent_jobs",
    "retry_job",
    "schedule",
    "submit_job",
    "timezone",
    "wait_for_job",
]


def timezone() -> ZoneInfo:
    """The zone times are shown in (``BATCHAPP_TIMEZONE``)."""
    return job_context().tz


def get_job(job_id: str) -> JobView:
    return ledger.get(job_context(), job_id)


def failed_chunks(job_id: str) -> list[Any]:
    """The job's failed chunks (index, attempts, error)."""
    return [c for c in ledger.chunk_rows(job_context(), job_id) if c.status == ledger.FAILED]


def recent_jobs(limit: int) -> list[JobView]:
    return list(ledger.recent(job_context(), limit))


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
    """Whether a chunk of the job may be queued or running: its queue is not empty, or a
    worker has one of its chunks. If the broker or the workers cannot tell, it may be."""
    try:
        with app.connection_for_write() as connection:
            try:
                _, depth, _ = connection.default_channel.queue_declare(
                    queue=chunk_queue(view.name), passive=True
                )
            except ChannelError:  # no such queue: nothing is in it
                depth = 0
        if depth:
            return True
        inspect = app.control.inspect(timeout=1.0)
        held = [*(inspect.active() or {}).values(), *(inspect.reserved() or {}).values()]
    except Exception:
        return True
    return any(
        task.get("name") == run_chunk.name and view.id in str(task.get("args"))
        for tasks in held
        for task in tasks
    )


@dataclass(frozen=True)
class ScheduleEntry:
    name: str
    task: str
    args: list[Any]
    schedule: str
    next_run: datetime

    def as_json(self, tz: ZoneInfo) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "args": self.args,
            "schedule": self.schedule,
            "next_run": self.next_run.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
            "timezone": tz.key,
        }


def schedule() -> tuple[list[ScheduleEntry], str | None]:
    """Each beat entry with its next run time (as if beat started now), and the beat that
    holds the lease (None: no beat is running)."""
    now = datetime.now(UTC)
    entries = []
    for name, entry in app.conf.beat_schedule.items():
        sched = maybe_schedule(entry["schedule"], app=app)
        # Rounded to the second: the estimate lands a few microseconds early.
        next_run = (now + sched.remaining_estimate(now) + timedelta(seconds=0.5)).replace(
            microsecond=0
        )
        args = list(entry.get("args", ()))
        entries.append(ScheduleEntry(name, entry["task"], args, describe(sched), next_run))
    engine = job_context().engine
    ensure_schema(engine)
    return entries, leases.holder_of(engine, LEASE)


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
