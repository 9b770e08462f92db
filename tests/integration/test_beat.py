"""Beat and worker together: the schedule really runs (interval shortened by configuration)."""

from __future__ import annotations

from sqlalchemy import select

from batchapp.storage.tables import jobs
from tests.integration.conftest import Stack
from tests.support import wait_until


def test_beat_runs_calculate_sum_and_the_report_on_schedule(stack: Stack) -> None:
    worker = stack.worker()
    beat = stack.beat(BATCHAPP_BEAT_INTERVAL="1")

    worker.wait_for_log("batchapp.tasks.calculate_sum", timeout=30)
    worker.wait_for_log("succeeded in", timeout=30)

    def report_statuses() -> list[str] | None:
        with stack.ctx.engine.connect() as connection:
            reports = list(
                connection.execute(select(jobs.c.status).where(jobs.c.name == "report")).scalars()
            )
        return reports if "succeeded" in reports else None

    reports = wait_until(report_statuses, "a report run that succeeded")

    assert "succeeded" in reports
    assert ": 5050" in worker.log()
    assert "Scheduler: Sending due task calculate-sum (batchapp.tasks.calculate_sum)" in beat.log()
    assert "Deprecat" not in beat.log() + worker.log()
