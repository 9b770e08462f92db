"""The states a job and a chunk can be in, and the only moves between them.

Every change of state goes through :func:`check_job_move` (in ``transitions.py``), the way
Celery's ``celery/states.py`` keeps its states in one table.
"""

from __future__ import annotations

# Job states.
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
# A periodic run that found its previous run going, or lost its lock while it waited.
SKIPPED = "skipped"

# Chunk states (a chunk can be FAILED and CANCELLED too).
PENDING = "pending"
DONE = "done"

JOB_MOVES: dict[str, frozenset[str]] = {
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, SKIPPED}),
    # `batchapp retry` runs what did not finish.
    FAILED: frozenset({RUNNING}),
    CANCELLED: frozenset({RUNNING}),
    SUCCEEDED: frozenset(),
    SKIPPED: frozenset(),
}

CHUNK_MOVES: dict[str, frozenset[str]] = {
    PENDING: frozenset({DONE, FAILED, CANCELLED}),
    # Only retry brings a chunk back; a late delivery of a failed or cancelled chunk is dropped.
    FAILED: frozenset({PENDING}),
    CANCELLED: frozenset({PENDING}),
    DONE: frozenset(),
}

FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED, SKIPPED})
CHUNK_FINISHED = frozenset({DONE, FAILED})


class UnknownJobError(LookupError):
    """No job with that id is in the ledger."""


class JobStateError(RuntimeError):
    """The job is not in a state that allows what was asked."""


class JobStalledError(JobStateError):
    """The job makes no progress and nothing of it is queued or running."""


def check_job_move(job_id: str, current: str, new: str, what: str) -> None:
    """Raise :class:`JobStateError` unless a job may go from ``current`` to ``new``."""
    if new not in JOB_MOVES.get(current, frozenset()):
        raise JobStateError(f"job {job_id} is {current}; {what}")
