"""The batchapp command: bad input gets one line and a non-zero exit; listings read well."""

from __future__ import annotations

import json

import pytest

from batchapp.processes import CeleryProcess
from batchapp.sales_csv import write_sample
from tests.conftest import RUN_DATA_DIR, Stack, run_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["submit", "nosuch"],
            "unknown job 'nosuch' (known: cleanup, import_csv, parallel_sum, report)",
        ),
        (["submit", "parallel_sum", "n"], "malformed parameter 'n': expected KEY=VALUE"),
        (["submit", "parallel_sum", "=5"], "malformed parameter '=5': expected KEY=VALUE"),
        (["submit", "parallel_sum", "n=1", "n=2"], "parameter 'n' given twice"),
        (["submit", "parallel_sum", "n=x"], "parallel_sum: n must be an integer, got 'x'"),
        (["submit", "import_csv", "path=../../etc/passwd"], "is outside BATCHAPP_DATA_DIR"),
        (["submit", "import_csv", "path=nope.csv"], "file not found: 'nope.csv'"),
        (["status", "0123abc"], "no job with id '0123abc'"),
        (["retry", "0123abc"], "no job with id '0123abc'"),
    ],
)
def test_bad_input_is_one_line_and_a_failure(stack: Stack, args: list[str], message: str) -> None:
    done = run_cli(*args, env=stack.env)

    [line] = done.stderr.strip().splitlines()
    assert done.returncode != 0
    assert line.startswith("Error: ")
    assert message in line


def test_bad_setting_is_one_line(stack: Stack) -> None:
    done = run_cli("jobs", env={**stack.env, "BATCHAPP_TIMEZONE": "Nowhere/Land"})

    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "batchapp: BATCHAPP_TIMEZONE: unknown timezone 'Nowhere/Land' (expected an IANA name "
        "such as Asia/Seoul)"
    ]


def test_bad_csv_header_is_refused_at_submit(stack: Stack) -> None:
    (RUN_DATA_DIR / "cols.csv").write_text("order_id,sold_at,store\nS-1,2026-11-25,ST\n")
    done = run_cli("submit", "import_csv", "path=cols.csv", env=stack.env)

    assert done.returncode != 0
    assert "missing column(s) sku, quantity, unit_price" in done.stderr


def test_empty_csv_is_refused_at_submit(stack: Stack) -> None:
    (RUN_DATA_DIR / "empty.csv").write_bytes(b"")
    done = run_cli("submit", "import_csv", "path=empty.csv", env=stack.env)

    assert "empty.csv is empty (expected a header line)" in done.stderr


@pytest.fixture(scope="module")
def worker(stack: Stack) -> CeleryProcess:
    return stack.worker()


def test_jobs_status_and_retry_show_a_finished_job(stack: Stack, worker: CeleryProcess) -> None:
    submitted = run_cli(
        "submit", "parallel_sum", "n=100", "chunk_size=10", "--wait", "--json", env=stack.env
    )
    job = json.loads(submitted.stdout)

    listing = run_cli("jobs", env=stack.env).stdout
    status = run_cli("status", job["id"], env=stack.env).stdout
    retried = run_cli("retry", job["id"], env=stack.env)

    assert job["status"] == "succeeded" and job["result"] == 5050
    assert listing.splitlines()[0].split() == [
        "ID",
        "JOB",
        "STATUS",
        "CHUNKS",
        "ITEMS",
        "CREATED",
        "(Asia/Seoul)",
    ]
    assert f"{job['id']}  parallel_sum  succeeded  10/10" in listing
    assert "result   5050" in status and "Asia/Seoul" in status
    assert retried.returncode != 0
    assert "succeeded; there is nothing to retry" in retried.stderr


def test_import_from_the_cli_reports_imported_and_rejected(
    stack: Stack, worker: CeleryProcess
) -> None:
    stats = write_sample(RUN_DATA_DIR / "cli.csv", 1_000, bad_fraction=0.1, seed=21)
    done = run_cli("submit", "import_csv", "path=cli.csv", "--wait", "--json", env=stack.env)
    result = json.loads(done.stdout)["result"]

    assert (result["imported"], result["rejected"]) == (1_000 - stats.bad, stats.bad)


def test_schedule_lists_every_entry_with_its_next_run_in_seoul(stack: Stack) -> None:
    entries = json.loads(run_cli("schedule", "--json", env=stack.env).stdout)
    table = run_cli("schedule", env=stack.env).stdout

    assert {e["name"] for e in entries} == {"calculate-sum", "sales-report", "reconcile", "cleanup"}
    assert all(e["timezone"] == "Asia/Seoul" for e in entries)
    assert "NEXT RUN (Asia/Seoul)" in table
    assert "batchapp.tasks.calculate_sum  [100]" in table


def test_sample_csv_writes_the_rows_it_says(stack: Stack) -> None:
    done = run_cli("sample-csv", "gen.csv", "500", "--bad", "0.1", env=stack.env)
    lines = (RUN_DATA_DIR / "gen.csv").read_text().splitlines()

    assert done.returncode == 0
    assert len(lines) == 501
    assert "500 rows" in done.stdout
