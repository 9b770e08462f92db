"""The batch jobs batchapp ships, by name."""

from __future__ import annotations

from batchapp.jobs.base import ChunkOutcome, Job, JobContext, ParamError
from batchapp.jobs.import_csv import ImportCsv
from batchapp.jobs.parallel_sum import ParallelSum
from batchapp.jobs.periodic import Cleanup, SalesReport

JOBS: dict[str, Job] = {
    job.name: job for job in (ParallelSum(), ImportCsv(), SalesReport(), Cleanup())
}


def get_job(name: str) -> Job:
    """The job called ``name``; :class:`ParamError` lists the known ones otherwise."""
    try:
        return JOBS[name]
    except KeyError:
        raise ParamError(f"unknown job {name!r} (known: {', '.join(sorted(JOBS))})") from None


__all__ = ["JOBS", "ChunkOutcome", "Job", "JobContext", "ParamError", "get_job"]
