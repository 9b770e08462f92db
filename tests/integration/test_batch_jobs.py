"""Batch jobs on real workers, once with the SQLite ledger and once with PostgreSQL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from batchapp import ledger
from batchapp.jobs import JobContext
from batchapp.jobs.sales_csv import write_sample
from batchapp.storage.tables import chunks, sales, sales_rejects
from batchapp.tasks import publish_chunks, run_periodic
from tests.integration.conftest import RUN_DATA_DIR, Stack, _stack
from tests.support import run_cli, wait_until

WAIT = 60.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def jobs_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Two worker processes (one pool process each) sharing one ledger database."""
    if request.param == "sqlite":
        url = f"sqlite:///{RUN_DATA_DIR / 'jobs.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    for stack in _stack(f"jobs-{request.param}", url):
        stack.worker("w1", concurrency=1)
        stack.worker("w2", concurrency=1)
        yield stack


def submit_cli(stack: Stack, *args: str) -> dict[str, Any]:
    done = run_cli("submit", *args, "--wait", "--json", env=stack.env)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def count(ctx: JobContext, table: Any, *where: Any) -> int:
    with ctx.engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
        )


def test_parallel_sum_of_a_million_from_the_cli(jobs_stack: Stack) -> None:
    job = submit_cli(jobs_stack, "parallel_sum", "n=1000000", "chunk_size=10000")

    assert job["status"] == "succeeded"
    assert job["result"] == 500000500000
    assert job["chunks"] == {"total": 100, "done": 100, "failed": 0, "cancelled": 0}


def test_a_sum_past_64_bits_comes_back_exact(jobs_stack: Stack) -> None:
    n = 10**18
    job = submit_cli(jobs_stack, "parallel_sum", f"n={n}", f"chunk_size={n // 5}")
    with jobs_stack.ctx.engine.connect() as connection:
        outputs = connection.execute(
            select(chunks.c.output).where(chunks.c.job_id == job["id"]).order_by(chunks.c.idx)
        ).scalars()
        exact = all(isinstance(output, int) for output in outputs)

    assert job["result"] == n * (n + 1) // 2 == 500000000000000000500000000000000000
    assert exact


def test_chunks_are_spread_over_both_worker_processes(jobs_stack: Stack) -> None:
    job = submit_cli(jobs_stack, "parallel_sum", "n=2000", "chunk_size=100")
    ran = [process.log().count(f"job {job['id']} chunk ") for process in jobs_stack.started]

    assert job["result"] == 2001000
    assert sum(ran) == 20
    assert all(n > 0 for n in ran), ran


def test_csv_with_bad_rows_of_several_kinds(jobs_stack: Stack) -> None:
    name = f"bad-{jobs_stack.name}.csv"
    bad = write_sample(RUN_DATA_DIR / name, 5_000, bad_fraction=0.05, seed=3).bad
    job = submit_cli(jobs_stack, "import_csv", f"path={name}", "chunk_rows=700")
    ctx = jobs_stack.ctx

    assert job["result"]["imported"] + job["result"]["rejected"] == 5_000
    assert job["result"]["rejected"] == bad
    with ctx.engine.connect() as connection:
        rejects = connection.execute(
            select(sales_rejects.c.line, sales_rejects.c.reason, sales_rejects.c.raw).where(
                sales_rejects.c.job_id == job["id"]
            )
        ).all()
    kinds = {reason.split(":")[0].split(" ")[0] for _, reason, _ in rejects}
    lines = (RUN_DATA_DIR / name).read_text().splitlines()
    assert len(rejects) == bad
    assert all(lines[line - 1] == raw for line, _, raw in rejects)
    assert {"sold_at", "quantity", "unit_price", "order_id", "expected"} <= kinds


def test_reimporting_a_file_adds_no_rows(jobs_stack: Stack) -> None:
    name = f"again-{jobs_stack.name}.csv"
    write_sample(RUN_DATA_DIR / name, 3_000, seed=11)
    first = submit_cli(jobs_stack, "import_csv", f"path={name}", "chunk_rows=1000")
    rows_after_first = count(jobs_stack.ctx, sales)
    second = submit_cli(jobs_stack, "import_csv", f"path={name}", "chunk_rows=1000")

    assert count(jobs_stack.ctx, sales) == rows_after_first
    assert (second["result"]["new"], second["result"]["duplicates"]) == (0, 3_000)
    assert first["result"]["imported"] == second["result"]["imported"] == 3_000
    assert first["result"]["new"] == 3_000


def test_retry_after_chunk_failures_reruns_only_those_chunks(jobs_stack: Stack) -> None:
    ctx = jobs_stack.ctx
    name = f"retry-{jobs_stack.name}.csv"
    write_sample(RUN_DATA_DIR / name, 1_000, seed=5)
    view = ledger.submit(
        ctx,
        "import_csv",
        {"path": name, "chunk_rows": 100},
        lambda job_id, indexes: publish_chunks(job_id, indexes[:6]),
    )
    _wait_for(ctx, view.id, lambda v: v.chunks_done == 6)

    os.rename(RUN_DATA_DIR / name, RUN_DATA_DIR / f"{name}.away")
    publish_chunks(view.id, [6, 7, 8, 9])
    failed = ledger.wait(ctx, view.id, timeout=WAIT)
    assert failed.status == "failed"
    assert "file not found" in (failed.error or "")

    os.rename(RUN_DATA_DIR / f"{name}.away", RUN_DATA_DIR / name)
    retried = run_cli("retry", view.id, env=jobs_stack.env)
    assert retried.stdout.strip() == f"job {view.id}: republished 4 chunk(s)"
    done = ledger.wait(ctx, view.id, timeout=WAIT)

    assert done.status == "succeeded"
    assert done.result["imported"] == 1_000
    attempts = [c.attempts for c in ledger.chunk_rows(ctx, view.id)]
    assert attempts == [1] * 6 + [2] * 4


def test_periodic_run_is_skipped_while_the_previous_run_is_going(jobs_stack: Stack) -> None:
    ctx = jobs_stack.ctx
    going = ledger.submit(ctx, "report", {}, lambda job_id, indexes: None, exclusive=True)

    run_periodic.delay("report")  # the next tick, as beat sends it
    skipped = _wait_for_new(ctx, "report", after=going.id)
    publish_chunks(going.id, [0])
    ledger.wait(ctx, going.id, timeout=WAIT)
    run_periodic.delay("report")
    next_run = _wait_for_new(ctx, "report", after=skipped.id)

    assert skipped.status == "skipped"
    assert skipped.error == f"skipped: the previous run {going.id} is still going"
    assert ledger.get(ctx, going.id).status == "succeeded"
    assert ledger.wait(ctx, next_run.id, timeout=WAIT).status == "succeeded"


def _wait_for(ctx: JobContext, job_id: str, condition: Any) -> ledger.JobView:
    def met() -> ledger.JobView | None:
        view = ledger.get(ctx, job_id)
        return view if condition(view) else None

    return wait_until(met, f"job {job_id} to reach the condition", WAIT)


def _wait_for_new(ctx: JobContext, name: str, after: str) -> ledger.JobView:
    def newer() -> ledger.JobView | None:
        ids = [v.id for v in ledger.recent(ctx, 50) if v.name == name]
        return ledger.get(ctx, ids[0]) if ids and ids[0] != after and after in ids else None

    return wait_until(newer, f"a {name} job newer than {after}", WAIT)


def test_chunk_rows_record_no_redelivery_in_a_clean_run(jobs_stack: Stack) -> None:
    job = submit_cli(jobs_stack, "parallel_sum", "n=100", "chunk_size=10")

    assert count(jobs_stack.ctx, chunks, chunks.c.job_id == job["id"], chunks.c.redelivered) == 0
