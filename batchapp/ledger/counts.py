"""A job's counts, derived from its chunk rows, never carried by hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from batchapp.ledger import statements
from batchapp.ledger.states import CANCELLED, DONE, FAILED, PENDING


@dataclass(frozen=True)
class ChunkCounts:
    done: int = 0
    failed: int = 0
    pending: int = 0
    cancelled: int = 0
    items_done: int = 0
    items_failed: int = 0

    def job_values(self) -> dict[str, Any]:
        """The job row's columns these counts fill."""
        return {
            "chunks_done": self.done,
            "chunks_failed": self.failed,
            "items_done": self.items_done,
            "items_failed": self.items_failed,
        }


def derive(connection: Connection, job_id: str) -> ChunkCounts:
    """Count the job's chunks by status, and the items of those done."""
    by_status = {
        status: (count, items_done, items_failed)
        for status, count, items_done, items_failed in connection.execute(
            statements.CHUNK_COUNTS, {"b_job_id": job_id}
        )
    }
    done, items_done, items_failed = by_status.get(DONE, (0, 0, 0))
    return ChunkCounts(
        done=done,
        failed=by_status.get(FAILED, (0, 0, 0))[0],
        pending=by_status.get(PENDING, (0, 0, 0))[0],
        cancelled=by_status.get(CANCELLED, (0, 0, 0))[0],
        items_done=items_done,
        items_failed=items_failed,
    )
