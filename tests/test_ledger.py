"""The job ledger and the jobs' plans, driven directly (no broker): chunks are run by hand."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from batchapp import ledger
from batchapp.db import engine_for
from batchapp.jobs import JobContext, ParamError
from batchapp.jobs.import_csv import FileChanged
from batchapp.sales_csv import write_sample
from batchapp.settings import load
from batchapp.tables import sales, sales_rejects


class Published:
    """A stand-in for the broker: remembers what would have been sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []

    def __call__(self, job_id: str, indexes: Sequence[int]) -> None:
        self.calls.append((job_id, list(indexes)))


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    settings = load({"BATCHAPP_DATA_DIR": str(tmp_path)})
    return JobContext(settings=settings, engine=engine_for(settings.database_url))


def run_all(ctx: JobContext, job_id: str, indexes: Sequence[int]) -> None:
    for index in indexes:
        ledger.run_chunk(ctx, job_id, index)


def test_parallel_sum_reduces_to_the_sum_and_counts_every_item(ctx: JobContext) -> None:
    publish = Published()
    view = ledger.submit(ctx, "parallel_sum", {"n": "1000", "chunk_size": "300"}, publish)
    assert publish.calls == [(view.id, [0, 1, 2, 3])]

    run_all(ctx, view.id, [3, 1, 0, 2])
    done = ledger.get(ctx, view.id)

    assert (done.status, done.result, done.items_done) == ("succeeded", 500500, 1000)
    assert done.finished_at is not None


def test_a_job_with_no_chunks_succeeds_at_once(ctx: JobContext) -> None:
    publish = Published()
    view = ledger.submit(ctx, "parallel_sum", {"n": 0}, publish)

    assert (view.status, view.result, publish.calls) == ("succeeded", 0, [])


def test_a_chunk_delivered_twice_is_counted_once(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 10, "chunk_size": 5}, Published())
    ledger.run_chunk(ctx, view.id, 0)
    second = ledger.run_chunk(ctx, view.id, 0)
    ledger.run_chunk(ctx, view.id, 1)

    assert "already done" in second
    assert ledger.get(ctx, view.id).result == 55
    assert ledger.get(ctx, view.id).chunks_done == 2


def test_retry_republishes_only_failed_chunks_and_then_succeeds(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, Published())
    ledger.run_chunk(ctx, view.id, 0)
    ledger.record_chunk_failure(ctx, view.id, 1, RuntimeError("disk on fire"))
    ledger.run_chunk(ctx, view.id, 2)
    failed = ledger.get(ctx, view.id)
    assert failed.status == "failed"
    assert failed.error == "1 chunk(s) failed; chunk 1: RuntimeError: disk on fire"

    publish = Published()
    assert ledger.retry(ctx, view.id, publish) == [1]
    assert publish.calls == [(view.id, [1])]
    ledger.run_chunk(ctx, view.id, 1)

    done = ledger.get(ctx, view.id)
    assert (done.status, done.result, done.chunks_failed, done.error) == ("succeeded", 465, 0, None)
    attempts = {c.idx: c.attempts for c in ledger.chunk_rows(ctx, view.id)}
    assert attempts == {0: 1, 1: 2, 2: 1}


def test_retry_of_a_succeeded_job_is_refused(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 0}, Published())
    with pytest.raises(ledger.JobStateError, match="succeeded; there is nothing to retry"):
        ledger.retry(ctx, view.id, Published())


def test_unknown_job_id_is_named(ctx: JobContext) -> None:
    with pytest.raises(ledger.UnknownJobError, match="no job with id 'nope'"):
        ledger.get(ctx, "nope")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nosuch", {}, "unknown job 'nosuch' (known: cleanup, import_csv, parallel_sum, report)"),
        ("parallel_sum", {}, "parallel_sum: missing parameter n"),
        ("parallel_sum", {"n": "ten"}, "parallel_sum: n must be an integer, got 'ten'"),
        ("parallel_sum", {"n": 1.5}, "parallel_sum: n must be an integer, got float"),
        ("parallel_sum", {"n": True}, "parallel_sum: n must be an integer, got bool"),
        ("parallel_sum", {"n": -1}, "n must be between 0 and"),
        ("parallel_sum", {"n": 10, "chunk_size": 0}, "chunk_size must be between 1 and"),
        (
            "parallel_sum",
            {"n": 10**6, "chunk_size": 1},
            "the limit is 10,000, so use chunk_size >= 100",
        ),
        ("parallel_sum", {"n": 1, "m": 2}, "unknown parameter 'm' (known: chunk_size, n)"),
        ("report", {"x": 1}, "report: unknown parameter 'x'"),
        ("import_csv", {}, "import_csv: missing parameter path"),
        ("import_csv", {"path": "missing.csv"}, "import_csv: file not found: 'missing.csv'"),
    ],
)
def test_bad_parameters_are_refused_by_name(
    ctx: JobContext, name: str, params: dict[str, object], message: str
) -> None:
    publish = Published()
    with pytest.raises(ParamError) as raised:
        ledger.submit(ctx, name, params, publish)

    assert message in str(raised.value)
    assert publish.calls == []


def test_exclusive_run_is_skipped_while_the_previous_one_is_going(ctx: JobContext) -> None:
    first = ledger.submit(ctx, "report", {}, Published(), exclusive=True)
    second = ledger.submit(ctx, "report", {}, Published(), exclusive=True)
    assert second.status == "skipped"
    assert second.error == f"skipped: the previous run {first.id} is still going"

    ledger.run_chunk(ctx, first.id, 0)
    third = ledger.submit(ctx, "report", {}, Published(), exclusive=True)

    assert ledger.get(ctx, first.id).status == "succeeded"
    assert third.status == "running"


def test_lock_of_a_run_whose_worker_died_expires(ctx: JobContext) -> None:
    # The lock lives 2 x task_time_limit: 0.1 s here.
    short = replace(ctx, settings=replace(ctx.settings, task_time_limit=0.05))
    ledger.submit(short, "report", {}, Published(), exclusive=True)  # its worker "died"
    deadline = time.monotonic() + 5
    while (status := ledger.submit(short, "report", {}, Published(), exclusive=True).status) != (
        "running"
    ) and time.monotonic() < deadline:
        time.sleep(0.02)

    assert status == "running"


def write_csv(ctx: JobContext, name: str, rows: int, bad: float = 0.0) -> int:
    return write_sample(ctx.settings.data_dir / name, rows, bad).bad


def test_import_plans_chunks_with_their_first_line_numbers(ctx: JobContext) -> None:
    write_csv(ctx, "s.csv", 25)
    publish = Published()
    view = ledger.submit(ctx, "import_csv", {"path": "s.csv", "chunk_rows": 10}, publish)
    from batchapp.tables import chunks

    with ctx.engine.connect() as connection:
        specs = (
            connection.execute(
                select(chunks.c.spec).where(chunks.c.job_id == view.id).order_by(chunks.c.idx)
            )
            .scalars()
            .all()
        )

    assert [(s["line"], s["lines"]) for s in specs] == [(2, 10), (12, 10), (22, 4 + 1)]


def test_import_counts_every_row_and_keeps_rejects_with_line_numbers(ctx: JobContext) -> None:
    bad = write_csv(ctx, "s.csv", 500, bad=0.2)
    view = ledger.submit(ctx, "import_csv", {"path": "s.csv", "chunk_rows": 64}, Published())
    run_all(ctx, view.id, range(view.chunks_total))
    done = ledger.get(ctx, view.id)

    assert done.result == {
        "rows": 500,
        "imported": 500 - bad,
        "rejected": bad,
        "new": 500 - bad,
        "duplicates": 0,
    }
    with ctx.engine.connect() as connection:
        rejects = connection.execute(select(sales_rejects.c.line, sales_rejects.c.raw)).all()
        stored = connection.execute(select(func.count()).select_from(sales)).scalar()
    lines_in_file = (ctx.settings.data_dir / "s.csv").read_text().splitlines()
    assert stored == 500 - bad
    assert len(rejects) == bad
    assert all(lines_in_file[line - 1] == raw for line, raw in rejects)


def test_import_of_a_file_changed_after_submit_fails_the_chunk(ctx: JobContext) -> None:
    write_csv(ctx, "s.csv", 30)
    view = ledger.submit(ctx, "import_csv", {"path": "s.csv"}, Published())
    with (ctx.settings.data_dir / "s.csv").open("a") as file:
        file.write("S-x,2026-11-25T09:00:00,ST,SKU,1,2\n")

    with pytest.raises(FileChanged, match="changed since the job was submitted"):
        ledger.run_chunk(ctx, view.id, 0)


@pytest.mark.parametrize("escape", ["../outside.csv", "ABSOLUTE", "link.csv"])
def test_import_refuses_paths_outside_the_data_dir(ctx: JobContext, escape: str) -> None:
    outside = ctx.settings.data_dir.parent / "outside.csv"
    write_sample(outside, 3)
    os.symlink(outside, ctx.settings.data_dir / "link.csv")
    path = str(outside) if escape == "ABSOLUTE" else escape

    with pytest.raises(ParamError, match="is outside BATCHAPP_DATA_DIR"):
        ledger.submit(ctx, "import_csv", {"path": path}, Published())


def test_report_totals_sales_per_seoul_day_and_store(ctx: JobContext) -> None:
    from batchapp.tables import sales_daily

    (ctx.settings.data_dir / "r.csv").write_text(
        "order_id,sold_at,store,sku,quantity,unit_price\n"
        "A-1,2026-11-24T23:30:00+09:00,ST-1,SKU-1,2,1.50\n"
        "A-2,2026-11-24T15:30:00Z,ST-1,SKU-1,1,10.00\n"  # 00:30 on the 25th in Seoul
        "A-3,2026-11-25T09:00:00,ST-2,SKU-2,3,2.00\n"
    )
    load = ledger.submit(ctx, "import_csv", {"path": "r.csv"}, Published())
    run_all(ctx, load.id, range(load.chunks_total))
    report = ledger.submit(ctx, "report", {}, Published())
    ledger.run_chunk(ctx, report.id, 0)

    with ctx.engine.connect() as connection:
        rows = connection.execute(
            select(
                sales_daily.c.day,
                sales_daily.c.store,
                sales_daily.c.orders,
                sales_daily.c.units,
                sales_daily.c.revenue_cents,
            ).order_by(sales_daily.c.day, sales_daily.c.store)
        ).all()
    assert [(str(day), store, o, u, r) for day, store, o, u, r in rows] == [
        ("2026-11-24", "ST-1", 1, 2, 300),
        ("2026-11-25", "ST-1", 1, 1, 1000),
        ("2026-11-25", "ST-2", 1, 3, 600),
    ]
    assert ledger.get(ctx, report.id).result == {"rows": 3, "days": 2}


def test_cleanup_removes_jobs_past_retention_and_expires_results(ctx: JobContext) -> None:
    from sqlalchemy import update

    from batchapp.tables import chunks, jobs

    expired: list[bool] = []
    ctx = replace(ctx, expire_results=lambda: expired.append(True))
    old = ledger.submit(ctx, "parallel_sum", {"n": 10, "chunk_size": 5}, Published())
    run_all(ctx, old.id, [0, 1])
    recent = ledger.submit(ctx, "parallel_sum", {"n": 0}, Published())
    days = ctx.settings.ledger_retention_days + 1
    with ctx.engine.begin() as connection:
        connection.execute(
            update(jobs)
            .where(jobs.c.id == old.id)
            .values(finished_at=jobs.c.finished_at - timedelta(days=days))
        )
    cleanup = ledger.submit(ctx, "cleanup", {}, Published())
    ledger.run_chunk(ctx, cleanup.id, 0)

    with pytest.raises(ledger.UnknownJobError):
        ledger.get(ctx, old.id)
    with ctx.engine.connect() as connection:
        left = connection.execute(select(func.count()).where(chunks.c.job_id == old.id)).scalar()
    assert left == 0
    assert ledger.get(ctx, recent.id).status == "succeeded"
    assert ledger.get(ctx, cleanup.id).result == {"jobs_removed": 1}
    assert expired == [True]
