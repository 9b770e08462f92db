"""The batch jobs this process knows, by name: batchapp's own, then discovered ones."""

from __future__ import annotations

from batchapp.jobs.base import Chunk, ChunkOutcome, Job, JobContext, ParamError
from batchapp.jobs.import_csv import ImportCsv
from batchapp.jobs.parallel_sum import ParallelSum
from batchapp.jobs.periodic import Cleanup, SalesReport
from batchapp.jobs.registry import BUILT_IN, JOBS, JobRegistry, JobRegistryError

for _job in (ParallelSum(), ImportCsv(), SalesReport(), Cleanup()):
    JOBS.register(_job, BUILT_IN)


def get_job(name: str) -> Job:
    """The job called ``name``; :class:`ParamError` lists the known ones otherwise."""
    return JOBS.get_job(name)


__all__ = [
    "JOBS",
    "Chunk",
    "ChunkOutcome",
    "Job",
    "JobContext",
    "JobRegistry",
    "JobRegistryError",
    "ParamError",
    "get_job",
]
