"""The job ledger: jobs and their chunks in SQL, each chunk run once in effect.

A job's life is in two tables. Submitting writes the job and one row per chunk, then
publishes one message per chunk. A chunk's worker writes its output and marks the chunk done
in one transaction that locks only that chunk's row, so one job's chunks commit side by side;
the chunk that then finds none left to run locks the job and runs its reduce, once. So there
is no chord to poll, a chunk delivered twice is written once, and a job whose worker died
between its last chunk and the reduce is finished by the reconciler.

Where things are:

- ``states.py``       the job and chunk states and the one table of legal moves
- ``transitions.py``  the only code that changes a job's status and counts, under its row lock;
                      a chunk marked done, and the job finished after the last one
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
from batchapp.ledger.views import (
    ExecutionView,
    JobView,
    chunk_errors,
    chunk_rows,
    executions,
    failed_chunks_json,
    get,
    recent,
    rejects,
    wait,
)

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
    "chunk_errors",
    "chunk_rows",
    "executions",
    "failed_chunks_json",
    "get",
    "lock_ttl",
    "recent",
    "reconcile",
    "record_chunk_failure",
    "rejects",
    "retry",
    "run_chunk",
    "submit",
    "wait",
]
