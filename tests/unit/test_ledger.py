"""The job ledger and the jobs' plans, driven directly (no broker): chunks are run by hand.

Every test runs on SQLite and on PostgreSQL (a database whose session time zone is Seoul,
so a time computed by the database instead of in UTC would show).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import OperationalError

from batchapp import ledger
from batchapp.jobs import JOBS, JobContext, ParamError
from batchapp.jobs.base import utcnow
from batchapp.jobs.import_csv import FileChanged
from batchapp.jobs.sales_csv import write_sample
from batchapp.ledger import views
from batchapp.settings import load
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import (
    chunks,
    ensure_schema,
    executions,
    jobs,
    locks,
    sales,
    sales_daily,
    sales_rejects,
)
from tests.interleaving import Interleaving


class Published:
    """A stand-in for the broker: remembers what would have been sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []

    def __call__(self, job_id: str, indexes: Sequence[int]) -> None:
        self.calls.append((job_id, list(indexes)))


@pytest.fixture(params=["sqlite"])  # tests/integration/test_ledger.py: the same on PostgreSQL
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
    assert (done.chunks_done, done.items_done) == (3, 30)
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
        ("nosuch", {}, "unknown job 'nosuch' (known: "),
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
    from batchapp.storage.tables import chunks

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


def daily_totals(connection: Any) -> list[tuple[object, ...]]:
    """``sales_daily`` as the report keeps it, in the order of :func:`recompute`'s rows."""
    rows = connection.execute(
        select(
            sales_daily.c.day,
            sales_daily.c.store,
            sales_daily.c.orders,
            sales_daily.c.units,
            sales_daily.c.revenue_cents,
        ).order_by(sales_daily.c.day, sales_daily.c.store)
    )
    return [tuple(row) for row in rows]


def test_report_totals_sales_per_seoul_day_and_store(ctx: JobContext) -> None:

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
        rows = daily_totals(connection)
    assert [(str(day), store, o, u, r) for day, store, o, u, r in rows] == [
        ("2026-11-24", "ST-1", 1, 2, 300),
        ("2026-11-25", "ST-1", 1, 1, 1000),
        ("2026-11-25", "ST-2", 1, 3, 600),
    ]
    assert ledger.get(ctx, report.id).result == {"rows": 3, "days": 2, "folded": 3}


def test_the_report_folds_in_new_rows_and_equals_a_full_recompute(ctx: JobContext) -> None:
    from sqlalchemy import delete

    from batchapp.jobs.sales_report import recompute

    def report() -> dict[str, int]:
        view = ledger.submit(ctx, "report", {}, Published())
        ledger.run_chunk(ctx, view.id, 0)
        done = ledger.get(ctx, view.id)
        assert done.status == "succeeded", done.error
        with ctx.engine.connect() as connection:
            assert daily_totals(connection) == recompute(connection)
        return dict(done.result)

    def load(name: str, chunks: Sequence[int] | None = None) -> Any:
        view = ledger.submit(ctx, "import_csv", {"path": name, "chunk_rows": 50}, Published())
        run_all(ctx, view.id, range(view.chunks_total) if chunks is None else chunks)
        return view

    write_sample(ctx.settings.data_dir / "a.csv", 120, 0.0, seed=1)
    write_sample(ctx.settings.data_dir / "b.csv", 90, 0.0, seed=2)
    assert report()["folded"] == 0
    load("a.csv")
    assert report()["folded"] == 120
    load("a.csv")  # a re-import adds nothing
    assert report()["folded"] == 0
    b = load("b.csv", [1])  # half an import, then the report, then the rest
    assert report()["folded"] == 40
    run_all(ctx, b.id, [0])
    assert report()["folded"] == 50

    # A key on lines 2 and 5: its later line commits first and is folded; its earlier line then
    # takes the key over with other values, and the report takes the old ones out.
    header = "order_id,sold_at,store,sku,quantity,unit_price\n"
    (ctx.settings.data_dir / "k.csv").write_text(
        header + "K-1,2026-11-24T10:00:00Z,ST-9,SKU-1,2,1.50\n"
        "K-2,2026-11-24T11:00:00Z,ST-9,SKU-1,1,1.00\n"
        "K-3,2026-11-25T11:00:00Z,ST-8,SKU-1,1,1.00\n"
        "K-1,2026-11-26T10:00:00Z,ST-7,SKU-2,9,9.00\n"
    )
    k = ledger.submit(ctx, "import_csv", {"path": "k.csv", "chunk_rows": 3}, Published())
    ledger.run_chunk(ctx, k.id, 1)
    assert report()["folded"] == 1
    ledger.run_chunk(ctx, k.id, 0)
    assert report()["folded"] == 3  # K-1 again, with line 2's values, and K-2, K-3

    with ctx.engine.begin() as connection:  # a folded row deleted by hand
        connection.execute(delete(sales).where(sales.c.order_id == "K-3"))
    assert report()["folded"] == 0


def test_the_first_report_after_an_upgrade_rebuilds_sales_daily_once(ctx: JobContext) -> None:
    from sqlalchemy import delete

    from batchapp.jobs.sales_report import recompute
    from batchapp.storage.tables import sales_daily_state

    write_sample(ctx.settings.data_dir / "a.csv", 60, 0.0, seed=1)
    load = ledger.submit(ctx, "import_csv", {"path": "a.csv"}, Published())
    run_all(ctx, load.id, range(load.chunks_total))
    first = ledger.submit(ctx, "report", {}, Published())
    ledger.run_chunk(ctx, first.id, 0)
    # As an older version leaves it: totals from a full recompute, no row marked folded.
    with ctx.engine.begin() as connection:
        connection.execute(delete(sales_daily_state))
        connection.execute(sales.update().values(folded=None))

    again = ledger.submit(ctx, "report", {}, Published())
    ledger.run_chunk(ctx, again.id, 0)

    assert ledger.get(ctx, again.id).result["folded"] == 60
    with ctx.engine.connect() as connection:
        assert daily_totals(connection) == recompute(connection)


def test_rows_committed_while_the_report_runs_are_folded_by_the_next_run(
    ctx: JobContext,
) -> None:
    import threading
    from datetime import date, datetime

    from batchapp.jobs.sales_report import recompute
    from batchapp.storage.tables import ensure_schema

    ensure_schema(ctx.engine)

    def report() -> None:
        view = ledger.submit(ctx, "report", {}, Published())
        ledger.run_chunk(ctx, view.id, 0)

    def row(order: str, quantity: int) -> dict[str, Any]:
        return {
            "order_id": order,
            "sold_at": datetime(2026, 11, 24, 10),
            "sold_on": date(2026, 11, 24),
            "store": "ST-1",
            "sku": "SKU-1",
            "quantity": quantity,
            "unit_price_cents": 100,
            "amount_cents": 100 * quantity,
            "job_id": "by-hand",
        }

    report()
    with ctx.engine.connect() as held:  # an import's chunk, not yet committed
        held.begin()
        held.execute(sales.insert(), [row("Z-1", 1), row("Z-2", 2)])
        running = threading.Thread(target=report)
        running.start()
        if ctx.engine.dialect.name == "postgresql":
            # The report does not wait for the open chunk, and another commits meanwhile.
            running.join(timeout=60)
            assert not running.is_alive()
            with ctx.engine.begin() as connection:
                connection.execute(sales.insert(), [row("Z-0", 4)])
        held.commit()  # on SQLite the report waited for this
    running.join(timeout=60)
    if ctx.engine.dialect.name == "sqlite":
        with ctx.engine.begin() as connection:
            connection.execute(sales.insert(), [row("Z-0", 4)])
    report()

    with ctx.engine.connect() as connection:
        kept = daily_totals(connection)
        assert kept == recompute(connection)
    assert [r[2:] for r in kept] == [(3, 7, 700)]


def test_cleanup_removes_jobs_past_retention_and_expires_results(ctx: JobContext) -> None:
    from sqlalchemy import update

    from batchapp.storage.tables import chunks, executions, jobs

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
        runs = connection.execute(
            select(func.count()).where(executions.c.job_id.in_([old.id, recent.id]))
        ).scalar()
    assert left == 0
    assert runs == 1, "the removed job's executions go with it; the recent job's stay"
    assert ledger.get(ctx, recent.id).status == "succeeded"
    assert ledger.get(ctx, cleanup.id).result == {"jobs_removed": 1}
    assert expired == [True]


def chunk_statuses(ctx: JobContext, job_id: str) -> list[str]:
    return [c.status for c in ledger.chunk_rows(ctx, job_id)]


def test_retry_waits_for_a_failure_being_recorded_and_counts_it(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, Published())
    ledger.record_chunk_failure(ctx, view.id, 0, RuntimeError("first"))
    ledger.run_chunk(ctx, view.id, 1)
    publish = Published()

    results = Interleaving(ctx.engine).run(
        lambda: ledger.record_chunk_failure(ctx, view.id, 2, RuntimeError("second")),
        lambda: ledger.retry(ctx, view.id, publish),
    )
    assert results["second"] == [0, 2]
    run_all(ctx, view.id, [0, 2])

    done = ledger.get(ctx, view.id)
    assert (done.status, done.result, done.chunks_done, done.chunks_failed) == (
        "succeeded",
        465,
        3,
        0,
    )


def test_two_deliveries_of_a_chunk_at_once_write_its_output_and_reduce_once(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_csv(ctx, "twice.csv", 50)
    job = JOBS["import_csv"]
    reduced: list[int] = []

    def counting_reduce(params: dict[str, object], outputs: list[object]) -> object:
        reduced.append(len(outputs))
        return type(job).reduce(job, params, outputs)

    monkeypatch.setattr(job, "reduce", counting_reduce)
    view = ledger.submit(ctx, "import_csv", {"path": "twice.csv"}, Published())

    results = Interleaving(ctx.engine).run(
        lambda: ledger.run_chunk(ctx, view.id, 0),
        lambda: ledger.run_chunk(ctx, view.id, 0, redelivered=True),
    )

    assert "done: 50 items" in results["first"]
    assert "already done; duplicate delivery dropped" in results["second"]
    done = ledger.get(ctx, view.id)
    assert (done.status, done.items_done, reduced) == ("succeeded", 50, [1])
    assert done.result == {"rows": 50, "imported": 50, "rejected": 0, "new": 50, "duplicates": 0}
    with ctx.engine.connect() as connection:
        stored = connection.execute(select(func.count()).select_from(sales)).scalar()
    assert stored == 50
    assert [c.attempts for c in ledger.chunk_rows(ctx, view.id)] == [1]


class BrokenPublish:
    """A broker that takes the messages (``deliver``) and then reports a failure anyway."""

    def __init__(self, deliver: bool) -> None:
        self.deliver = deliver
        self.sent: list[int] = []

    def __call__(self, job_id: str, indexes: Sequence[int]) -> None:
        if self.deliver:
            self.sent.extend(indexes)
        raise ConnectionError("broker went away")


def test_a_failed_publish_fails_the_job_and_releases_its_periodic_lock(ctx: JobContext) -> None:
    with pytest.raises(ConnectionError):
        ledger.submit(ctx, "report", {}, BrokenPublish(deliver=False), exclusive=True)
    failed = ledger.recent(ctx, 1)[0]
    next_tick = ledger.submit(ctx, "report", {}, Published(), exclusive=True)

    assert failed.status == "failed"
    assert "could not publish its chunks: broker went away" in (failed.error or "")
    assert f"batchapp retry {failed.id}" in (failed.error or "")
    assert next_tick.status == "running"


def test_chunks_queued_despite_a_failed_publish_leave_the_job_failed_until_retried(
    ctx: JobContext,
) -> None:
    broker = BrokenPublish(deliver=True)
    with pytest.raises(ConnectionError):
        ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, broker)
    failed = ledger.recent(ctx, 1)[0]
    dropped = [ledger.run_chunk(ctx, failed.id, index) for index in broker.sent]

    assert all("has failed; dropped" in message for message in dropped)
    assert ledger.get(ctx, failed.id).status == "failed"
    publish = Published()
    assert ledger.retry(ctx, failed.id, publish) == [0, 1]
    run_all(ctx, failed.id, [0, 1])
    done = ledger.get(ctx, failed.id)
    assert (done.status, done.result, done.error) == ("succeeded", 210, None)


def test_a_failed_publish_after_every_chunk_finished_leaves_the_job_succeeded(
    ctx: JobContext,
) -> None:
    def publish_runs_then_fails(job_id: str, indexes: Sequence[int]) -> None:
        run_all(ctx, job_id, indexes)
        raise ConnectionError("confirm lost")

    with pytest.raises(ConnectionError):
        ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, publish_runs_then_fails)
    done = ledger.recent(ctx, 1)[0]

    assert (done.status, done.result, done.error) == ("succeeded", 210, None)
    with pytest.raises(ledger.JobStateError, match="succeeded; there is nothing to retry"):
        ledger.retry(ctx, done.id, Published())


def make_stale(ctx: JobContext, job_id: str) -> None:
    """Nothing moved the job for an hour: neither a change of state nor a chunk's commit."""
    an_hour_ago = utcnow() - timedelta(hours=1)
    with ctx.engine.begin() as connection:
        connection.execute(update(jobs).where(jobs.c.id == job_id).values(updated_at=an_hour_ago))
        connection.execute(
            update(chunks)
            .where(chunks.c.job_id == job_id, chunks.c.finished_at.is_not(None))
            .values(finished_at=an_hour_ago)
        )


def test_reconciler_republishes_the_unfinished_chunks_of_a_job_nothing_moves(
    ctx: JobContext,
) -> None:
    lost = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, Published())
    ledger.run_chunk(ctx, lost.id, 1)
    moving = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, Published())
    make_stale(ctx, lost.id)
    publish = Published()

    assert ledger.reconcile(ctx, publish) == {lost.id: "republished 2 chunk(s)"}
    assert publish.calls == [(lost.id, [0, 2])]
    assert ledger.reconcile(ctx, publish) == {}, "republished again before a period passed"
    run_all(ctx, lost.id, [0, 2])
    assert ledger.get(ctx, lost.id).result == 465
    assert ledger.get(ctx, moving.id).status == "running"


def test_reconciler_finishes_a_running_job_whose_chunks_all_finished(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    ledger.run_chunk(ctx, view.id, 0)
    with ctx.engine.begin() as connection:
        # A chunk finished by an older version, whose count on the job was lost.
        connection.execute(
            update(chunks)
            .where(chunks.c.job_id == view.id, chunks.c.idx == 1)
            .values(status="failed", error="lost", attempts=1)
        )
    make_stale(ctx, view.id)

    assert ledger.reconcile(ctx, Published()) == {view.id: "finished: failed"}
    done = ledger.get(ctx, view.id)
    assert (done.status, done.chunks_done, done.chunks_failed) == ("failed", 1, 1)
    assert done.error == "1 chunk(s) failed; chunk 1: lost"


def test_cancel_stops_what_has_not_run_and_retry_runs_it(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 40, "chunk_size": 10}, Published())
    ledger.run_chunk(ctx, view.id, 0)

    cancelled = ledger.cancel(ctx, view.id)
    late = ledger.run_chunk(ctx, view.id, 1)

    assert (cancelled.status, cancelled.chunks_done, cancelled.items_done) == ("cancelled", 1, 10)
    assert cancelled.chunks_cancelled == 3
    assert cancelled.finished_at is not None
    assert "was cancelled; dropped" in late
    assert chunk_statuses(ctx, view.id) == ["done", "cancelled", "cancelled", "cancelled"]
    publish = Published()
    assert ledger.retry(ctx, view.id, publish) == [1, 2, 3]
    run_all(ctx, view.id, [1, 2, 3])
    done = ledger.get(ctx, view.id)
    assert (done.status, done.result, done.error) == ("succeeded", 820, None)


def test_a_chunk_that_was_running_when_its_job_was_cancelled_is_rolled_back(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_csv(ctx, "cancel.csv", 20)
    view = ledger.submit(ctx, "import_csv", {"path": "cancel.csv"}, Published())
    job = JOBS["import_csv"]
    real_prepare = type(job).prepare

    def prepare_then_cancel(*args: object) -> object:
        prepared = real_prepare(job, *args)  # type: ignore[arg-type]
        ledger.cancel(ctx, view.id)
        return prepared

    monkeypatch.setattr(job, "prepare", prepare_then_cancel)

    assert "was cancelled; dropped" in ledger.run_chunk(ctx, view.id, 0)
    with ctx.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(sales)).scalar() == 0
    assert ledger.get(ctx, view.id).status == "cancelled"


def test_only_a_running_job_can_be_cancelled(ctx: JobContext) -> None:
    done = ledger.submit(ctx, "parallel_sum", {"n": 0}, Published())
    with pytest.raises(ledger.JobStateError, match="is succeeded; only a running job can be"):
        ledger.cancel(ctx, done.id)
    with pytest.raises(ledger.UnknownJobError, match="no job with id 'nope'"):
        ledger.cancel(ctx, "nope")


def test_a_cancelled_periodic_run_releases_its_lock(ctx: JobContext) -> None:
    first = ledger.submit(ctx, "report", {}, Published(), exclusive=True)
    ledger.cancel(ctx, first.id)

    assert ledger.submit(ctx, "report", {}, Published(), exclusive=True).status == "running"


def test_a_chunk_whose_worker_keeps_dying_fails_after_max_deliveries(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    ledger.run_chunk(ctx, view.id, 1)
    # Deliveries 1 to 3 each died before finishing (nothing recorded); 2 and 3 came redelivered.
    with pytest.raises(RuntimeError):
        _run_dying(ctx, view.id, 0, redelivered=False)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            _run_dying(ctx, view.id, 0, redelivered=True)
    fourth = ledger.run_chunk(ctx, view.id, 0, redelivered=True)

    assert "worker lost 3 times" in fourth
    failed = ledger.get(ctx, view.id)
    assert (failed.status, failed.chunks_done, failed.chunks_failed) == ("failed", 1, 1)
    assert "chunk 0: worker lost 3 times" in (failed.error or "")
    assert ledger.chunk_rows(ctx, view.id)[0].deliveries == 3


def _run_dying(ctx: JobContext, job_id: str, index: int, *, redelivered: bool) -> None:
    """A delivery whose process dies in the chunk's work: nothing after that point happens."""
    job = JOBS["parallel_sum"]

    def die(*_: object) -> None:
        raise RuntimeError("process died")

    original = job.prepare
    job.prepare = die  # type: ignore[method-assign]
    try:
        ledger.run_chunk(ctx, job_id, index, redelivered=redelivered)
    finally:
        job.prepare = original  # type: ignore[method-assign]


def test_the_brokers_delivery_count_fails_a_poison_chunk_at_once(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 10, "chunk_size": 10}, Published())
    message = ledger.run_chunk(ctx, view.id, 0, redelivered=True, delivery=4)

    assert "worker lost 3 times" in message
    assert ledger.get(ctx, view.id).status == "failed"


def test_a_periodic_run_that_waited_past_its_lock_steps_aside(ctx: JobContext) -> None:
    # The lock lives 2 x task_time_limit: 0.1 s here.
    short = replace(ctx, settings=replace(ctx.settings, task_time_limit=0.05))
    queued = ledger.submit(short, "report", {}, Published(), exclusive=True)
    deadline = time.monotonic() + 5
    while (later := ledger.submit(short, "report", {}, Published(), exclusive=True)).status != (
        "running"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)

    late = ledger.run_chunk(short, queued.id, 0)
    ledger.run_chunk(short, later.id, 0)

    assert f"skipped: the run {later.id}" in late
    stepped_aside = ledger.get(ctx, queued.id)
    assert stepped_aside.status == "skipped"
    assert stepped_aside.error == (
        f"skipped: the run {later.id} took over while this one waited in the queue"
    )
    assert chunk_statuses(ctx, queued.id) == ["cancelled"]
    assert ledger.get(ctx, later.id).status == "succeeded"


def test_a_periodic_runs_lock_counts_from_when_it_starts(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    hourly = replace(ctx, settings=replace(ctx.settings, task_time_limit=1800))  # lock: 1 h
    queued = ledger.submit(hourly, "report", {}, Published(), exclusive=True)
    with ctx.engine.begin() as connection:
        # As if the run had waited in a queue for 59 minutes.
        expires_at = connection.execute(select(locks.c.expires_at)).scalar_one()
        connection.execute(update(locks).values(expires_at=expires_at - timedelta(minutes=59)))
    seen = []

    def look_at_the_lock(*_: object) -> None:
        with ctx.engine.connect() as connection:
            seen.append(connection.execute(select(locks.c.expires_at)).scalar_one())

    monkeypatch.setattr(JOBS["report"], "prepare", look_at_the_lock)
    started = utcnow()
    ledger.run_chunk(hourly, queued.id, 0)

    assert seen[0] >= started + timedelta(minutes=59)
    assert ledger.get(ctx, queued.id).status == "succeeded"


def test_exact_integers_past_64_bits_survive_the_ledger(ctx: JobContext) -> None:
    n = 10**18
    view = ledger.submit(ctx, "parallel_sum", {"n": n, "chunk_size": n // 4}, Published())
    run_all(ctx, view.id, range(view.chunks_total))
    done = ledger.get(ctx, view.id)

    assert done.result == n * (n + 1) // 2
    assert isinstance(done.result, int)
    with ctx.engine.connect() as connection:
        outputs = connection.execute(
            select(chunks.c.output).where(chunks.c.job_id == view.id).order_by(chunks.c.idx)
        ).scalars()
        assert sum(outputs) == n * (n + 1) // 2


def test_a_chunk_of_a_job_the_ledger_does_not_have_is_named(ctx: JobContext) -> None:
    with pytest.raises(ledger.UnknownJobError, match=f"job {'0' * 32} chunk 0 is not in the"):
        ledger.run_chunk(ctx, "0" * 32, 0)


def test_wait_names_a_job_that_nothing_works_on(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    asked: list[str] = []

    def nothing_in_flight(current: ledger.JobView) -> bool:
        asked.append(current.id)
        return False

    with pytest.raises(ledger.JobStalledError, match="none of its chunks is queued or running"):
        ledger.wait(ctx, view.id, timeout=30, in_flight=nothing_in_flight, stall_after=0.05)
    assert asked == [view.id, view.id]


def test_wait_reads_again_when_the_database_cuts_its_connection(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    cut: list[str] = []

    def drop_the_next_read(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not cut:
            cut.append(statement)
            raise OperationalError(statement, None, Exception("server closed the connection"))

    def finish_then_cut(current: ledger.JobView) -> None:
        # The job finishes while its waiter's next read loses the connection.
        if not current.finished and not event.contains(
            ctx.engine, "before_cursor_execute", drop_the_next_read
        ):
            run_all(ctx, view.id, [0, 1])
            event.listen(ctx.engine, "before_cursor_execute", drop_the_next_read)

    try:
        done = ledger.wait(ctx, view.id, timeout=30, on_progress=finish_then_cut)
    finally:
        if event.contains(ctx.engine, "before_cursor_execute", drop_the_next_read):
            event.remove(ctx.engine, "before_cursor_execute", drop_the_next_read)
    assert (done.status, done.result) == ("succeeded", 210)
    assert len(cut) == 1


def test_wait_keeps_waiting_while_a_chunk_is_in_flight(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    asked: list[int] = []

    def running_then_done(current: ledger.JobView) -> bool:
        asked.append(1)
        if len(asked) == 3:
            run_all(ctx, view.id, [0, 1])
        return True

    done = ledger.wait(ctx, view.id, timeout=30, in_flight=running_then_done, stall_after=0.05)
    assert (done.status, len(asked)) == ("succeeded", 3)


def test_wait_on_sqlite_reads_the_job_only_after_a_commit(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    reads: list[str] = []
    read = views.get

    def counted(ctx: JobContext, job_id: str) -> ledger.JobView:
        reads.append(job_id)
        return read(ctx, job_id)

    monkeypatch.setattr(views, "get", counted)
    with pytest.raises(TimeoutError, match="still running"):
        ledger.wait(ctx, view.id, timeout=0.3)
    on_sqlite = ctx.engine.dialect.name == "sqlite"
    # SQLite tells for 9 us a poll that nothing was committed; PostgreSQL reads every poll.
    assert len(reads) == 1 if on_sqlite else len(reads) > 5

    reads.clear()

    def finish_on_first_look(current: ledger.JobView) -> None:
        if current.status == "running":
            run_all(ctx, view.id, [0, 1])  # commits on other connections wake the wait

    done = ledger.wait(ctx, view.id, timeout=30, on_progress=finish_on_first_look)
    assert done.result == 210
    assert len(reads) == 2 if on_sqlite else len(reads) >= 2


def test_ledger_work_a_chunk_stays_flat_over_a_3000_chunk_job(tmp_path: Path) -> None:
    settings = load({"BATCHAPP_DATA_DIR": str(tmp_path)})
    ctx = JobContext(settings=settings, engine=engine_for(settings.database_url))
    view = ledger.submit(ctx, "parallel_sum", {"n": 3000, "chunk_size": 1}, Published())
    took = []
    for index in range(3000):
        started = time.perf_counter()
        ledger.run_chunk(ctx, view.id, index)
        took.append(time.perf_counter() - started)
    first, last = statistics.median(took[:300]), statistics.median(took[-300:])
    print(
        f"\nledger work a chunk (SQLite, 3,000 chunks): first 300 {first * 1e3:.3f} ms, "
        f"last 300 {last * 1e3:.3f} ms, median {statistics.median(took) * 1e3:.3f} ms"
    )

    assert ledger.get(ctx, view.id).result == 3000 * 3001 // 2
    # Per chunk the ledger probes an index; it never counts the job's chunks.
    assert last < 3 * first + 0.001


def test_a_chunk_committing_when_its_job_is_cancelled_waits_and_is_dropped(
    ctx: JobContext,
) -> None:
    write_csv(ctx, "race.csv", 30)
    view = ledger.submit(ctx, "import_csv", {"path": "race.csv"}, Published())

    results = Interleaving(ctx.engine).run(
        lambda: ledger.cancel(ctx, view.id),
        lambda: ledger.run_chunk(ctx, view.id, 0),
    )

    assert "was cancelled; dropped" in results["second"]
    with ctx.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(sales)).scalar() == 0
    cancelled = ledger.get(ctx, view.id)
    assert (cancelled.status, cancelled.chunks_done, cancelled.chunks_cancelled) == (
        "cancelled",
        0,
        1,
    )


def test_a_cancel_waits_for_a_chunk_committing_and_keeps_its_output(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())

    results = Interleaving(ctx.engine).run(
        lambda: ledger.run_chunk(ctx, view.id, 0),
        lambda: ledger.cancel(ctx, view.id),
    )

    assert "done: 10 items" in results["first"]
    assert (results["second"].status, results["second"].chunks_done) == ("cancelled", 1)
    assert chunk_statuses(ctx, view.id) == ["done", "cancelled"]
    assert ledger.retry(ctx, view.id, Published()) == [1]
    ledger.run_chunk(ctx, view.id, 1)
    assert ledger.get(ctx, view.id).result == 210


def test_the_ledger_does_not_import_celery() -> None:
    code = (
        "import sys, batchapp.ledger; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'celery', 'kombu', 'billiard'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "[]"


def test_a_keyed_submit_returns_the_running_or_succeeded_job_with_its_key(
    ctx: JobContext,
) -> None:
    publish = Published()
    first = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, publish, key="d-1")
    again = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, publish, key="d-1")
    assert (first.key, first.existing, again.id, again.existing) == ("d-1", False, first.id, True)
    assert publish.calls == [(first.id, [0, 1])]

    run_all(ctx, first.id, [0, 1])
    done = ledger.submit(ctx, "parallel_sum", {"n": 5}, publish, key="d-1")
    assert (done.id, done.status, done.existing) == (first.id, "succeeded", True)
    # Keys are per job name; a job without a key is never matched.
    other = ledger.submit(ctx, "report", {}, publish, key="d-1")
    plain = ledger.submit(ctx, "parallel_sum", {"n": 5}, publish)
    assert len({first.id, other.id, plain.id}) == 3
    assert (other.existing, plain.key) == (False, None)


def test_a_key_whose_job_failed_or_was_cancelled_starts_a_new_job(ctx: JobContext) -> None:
    failed = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published(), key="k")
    ledger.run_chunk(ctx, failed.id, 0)
    ledger.record_chunk_failure(ctx, failed.id, 1, "boom")

    newer = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published(), key="k")
    assert (newer.id != failed.id, newer.existing, newer.status) == (True, False, "running")
    # The failed job may not run beside the job that now holds its key...
    with pytest.raises(ledger.JobStateError, match=f"now belongs to the newer job {newer.id}"):
        ledger.retry(ctx, failed.id, Published())
    assert ledger.get(ctx, failed.id).status == "failed"
    # ...but once that one is cancelled, the key is free and the older job may be retried.
    ledger.cancel(ctx, newer.id)
    assert ledger.retry(ctx, failed.id, Published()) == [1]
    assert ledger.submit(ctx, "parallel_sum", {"n": 1}, Published(), key="k").id == failed.id


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "key must be 1 to 200 characters, got 0"),
        ("x" * 201, "key must be 1 to 200 characters, got 201"),
        ("a\nb", "key must be printable, with no space at either end, got 'a\\nb'"),
        (" a", "key must be printable, with no space at either end, got ' a'"),
        (5, "key must be a string, got int"),
    ],
)
def test_bad_keys_are_refused(ctx: JobContext, key: object, message: str) -> None:
    with pytest.raises(ParamError, match=re.escape(message)):
        ledger.submit(ctx, "parallel_sum", {"n": 1}, Published(), key=key)  # type: ignore[arg-type]


def test_two_submits_with_one_key_at_once_create_one_job(ctx: JobContext) -> None:
    ensure_schema(ctx.engine)
    first_publish, second_publish = Published(), Published()

    results = Interleaving(ctx.engine).run(
        lambda: ledger.submit(ctx, "parallel_sum", {"n": 10}, first_publish, key="same"),
        lambda: ledger.submit(ctx, "parallel_sum", {"n": 10}, second_publish, key="same"),
    )

    first, second = results["first"], results["second"]
    assert (second.id, first.existing, second.existing) == (first.id, False, True)
    assert (len(first_publish.calls), second_publish.calls) == (1, [])
    with ctx.engine.connect() as connection:
        keyed = select(func.count()).select_from(jobs).where(jobs.c.job_key == "same")
        assert connection.execute(keyed).scalar() == 1


def test_a_retry_racing_a_submit_with_the_jobs_key_is_refused(ctx: JobContext) -> None:
    failed = ledger.submit(ctx, "parallel_sum", {"n": 10}, Published(), key="race")
    ledger.record_chunk_failure(ctx, failed.id, 0, "boom")

    # On PostgreSQL the retry passes its own check, then the unique index stops it.
    with pytest.raises(ledger.JobStateError, match="now belongs to the newer job"):
        Interleaving(ctx.engine).run(
            lambda: ledger.submit(ctx, "parallel_sum", {"n": 10}, Published(), key="race"),
            lambda: ledger.retry(ctx, failed.id, Published()),
        )
    assert ledger.get(ctx, failed.id).status == "failed"
    [newer] = [v for v in ledger.recent(ctx) if v.id != failed.id]
    assert (newer.key, newer.status) == ("race", "running")


def test_each_run_of_a_job_is_an_execution_with_its_own_chunks(ctx: JobContext) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, Published())
    ledger.run_chunk(ctx, view.id, 0)
    [running] = ledger.executions(ctx, view.id)
    assert (running.number, running.started_by, running.outcome) == (1, "submit", "running")
    assert (running.chunks_done, running.chunks_failed, running.finished_at) == (1, 0, None)

    ledger.record_chunk_failure(ctx, view.id, 1, "boom")
    ledger.record_chunk_failure(ctx, view.id, 2, "bang")
    ledger.retry(ctx, view.id, Published())
    ledger.run_chunk(ctx, view.id, 1)
    ledger.cancel(ctx, view.id)
    ledger.retry(ctx, view.id, Published())
    ledger.run_chunk(ctx, view.id, 2)

    runs = ledger.executions(ctx, view.id)
    assert [(r.number, r.started_by, r.outcome, r.chunks_done, r.chunks_failed) for r in runs] == [
        (1, "submit", "failed", 1, 2),
        (2, "retry", "cancelled", 1, 0),
        (3, "retry", "succeeded", 1, 0),
    ]
    assert runs[0].error == "2 chunk(s) failed; chunk 1: boom"
    assert all(r.finished_at is not None and r.finished_at >= r.started_at for r in runs)
    assert runs[2].finished_at == ledger.get(ctx, view.id).finished_at


def test_a_skipped_periodic_run_is_one_execution_that_never_ran(ctx: JobContext) -> None:
    ledger.submit(ctx, "report", {}, Published(), exclusive=True)
    skipped = ledger.submit(ctx, "report", {}, Published(), exclusive=True)

    [run] = ledger.executions(ctx, skipped.id)
    assert (run.outcome, run.chunks_done, run.finished_at) == ("skipped", 0, skipped.finished_at)


def test_a_job_from_before_executions_gets_its_first_run_written_at_retry(
    ctx: JobContext,
) -> None:
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    ledger.run_chunk(ctx, view.id, 0)
    ledger.record_chunk_failure(ctx, view.id, 1, "boom")
    with ctx.engine.begin() as connection:
        connection.execute(executions.delete().where(executions.c.job_id == view.id))
    assert ledger.executions(ctx, view.id) == []

    ledger.retry(ctx, view.id, Published())
    ledger.run_chunk(ctx, view.id, 1)

    runs = ledger.executions(ctx, view.id)
    assert [(r.number, r.started_by, r.outcome, r.chunks_done, r.chunks_failed) for r in runs] == [
        (1, "submit", "failed", 1, 1),
        (2, "retry", "succeeded", 1, 0),
    ]
