"""The job ledger: jobs and their chunks in SQL, each chunk run once in effect.

A job's life is in two tables. Submitting writes the job and one row per chunk, then
publishes one message per chunk. A chunk's worker writes its output and marks the chunk done
in one transaction; the transaction that finishes the last chunk also runs the job's reduce.
So there is no chord to poll, a chunk delivered twice is written once, and a job can never be
left finished but unreduced.

Where things are:

- ``states.py``       the job and chunk states and the one table of legal moves
- ``transitions.py``  the only code that changes a job's status and counts, under its row lock
- ``chunks.py``       running a chunk; recording a failed chunk or one that keeps killing workers
- ``lifecycle.py``    submit, retry, cancel, and the reconciler for jobs nothing moves
- ``locks.py``        periodic runs never overlap
- ``views.py``        reading jobs and chunks, and waiting for a job
- ``statements.py``   the chunk path's statements, built once

The ledger knows nothing of Celery: publishing is a function the caller passes in.
"""

from __future__ import annotations

from batchapp.ledger.chunks import record_chunk_failure, run_chunk
from batchapp.ledger.lifecycle import Publish, cancel, check_key, reconcile, retry, submit
from batchapp.ledger.locks import lock_ttl
from batchapp.ledger.states import (
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    JobStalledError,
    JobStateError,
    UnknownJobError,
)
from batchapp.ledger.views import ExecutionView, JobView, chunk_rows, executions, get, recent, wait

__all__ = [
    "CANCELLED",
    "DONE",
    "FAILED",
    "FINISHED",
    "PENDING",
    "RUNNING",
    "SKIPPED",
    "SUCCEEDED",
    "ExecutionView",
    "JobStalledError",
    "JobStateError",
    "JobView",
    "Publish",
    "UnknownJobError",
    "cancel",
    "check_key",
    "chunk_rows",
    "executions",
    "get",
    "lock_ttl",
    "recent",
    "reconcile",
    "record_chunk_failure",
    "retry",
    "run_chunk",
    "submit",
    "wait",
]
