"""Beat's entries as Celery reads them, from the three places a schedule comes from.

- batchapp's own (:mod:`batchapp.beat.schedule`, in the settings' ``beat_schedule``);
- jobs that declare one (``schedule=`` on ``@job`` or the ``Job.schedule`` attribute), named
  after the job;
- the entries operators store in the database (:mod:`batchapp.beat.stored`).

Each runs ``run_periodic(job, **params)``, so runs of one job never overlap (the job's lock).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchapp.beat.stored import StoredEntry
from batchapp.beat.timing import Schedule, ScheduleError
from batchapp.broker.queues import PERIODIC
from batchapp.jobs.base import Job, JobContext, ParamError

RUN_PERIODIC = "batchapp.tasks.run_periodic"
CODE = "code"
STORED = "stored"


def job_entry(job: str, schedule: Schedule, params: Mapping[str, Any]) -> dict[str, Any]:
    """An entry running ``job`` with ``params``; its tick expires when the next one is due."""
    return {
        "task": RUN_PERIODIC,
        "schedule": schedule.celery(),
        "args": (job,),
        "kwargs": dict(params),
        "options": {"queue": PERIODIC, "expires": schedule.expires_s},
    }


def declared_entries(jobs: Mapping[str, Job], ctx: JobContext) -> dict[str, dict[str, Any]]:
    """An entry per job that declares a schedule, its parameters checked by the job itself."""
    found = {}
    for name, job in sorted(jobs.items()):
        schedule = getattr(job, "schedule", None)
        if schedule is None:
            continue
        params = dict(getattr(job, "schedule_params", {}))
        try:
            job.parse_params(params, ctx)
        except ParamError as exc:
            raise ScheduleError(f"job {name}: bad schedule_params: {exc}") from None
        found[name] = job_entry(name, schedule, params)
    return found


def code_entries(
    beat_schedule: Mapping[str, dict[str, Any]], jobs: Mapping[str, Job], ctx: JobContext
) -> dict[str, dict[str, Any]]:
    """batchapp's own entries and the jobs' declared ones; a job named like an entry is refused."""
    declared = declared_entries(jobs, ctx)
    clash = sorted(set(declared) & set(beat_schedule))
    if clash:
        raise ScheduleError(
            f"job {clash[0]} declares a schedule, but beat has an entry of that name already"
        )
    return {**beat_schedule, **declared}


def stored_entry(entry: StoredEntry) -> dict[str, Any]:
    return job_entry(entry.job, entry.schedule, entry.params)
