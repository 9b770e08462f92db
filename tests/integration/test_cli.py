"""The batchapp command with a worker behind it, and with a database that fails."""

from __future__ import annotations

import json

import pytest

from batchapp.cli.processes import CeleryProcess
from batchapp.jobs.sales_csv import write_sample
from tests.integration.conftest import RUN_DATA_DIR, Stack
from tests.support import run_cli


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


@pytest.mark.parametrize(
    ("database_url", "message"),
    [
        (
            "postgresql://postgres:s3cret@127.0.0.1:1/ledger",
            "cannot use the database at postgresql://postgres:***@127.0.0.1:1/ledger: ",
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/batchapp_no_such_database",
            'database "batchapp_no_such_database" does not exist',
        ),
        (
            f"sqlite:///{RUN_DATA_DIR / 'not-a-dir.csv' / 'ledger.sqlite'}",
            f"cannot use the database at sqlite:///{RUN_DATA_DIR / 'not-a-dir.csv'}/ledger.sqlite",
        ),
    ],
)
def test_a_database_that_fails_is_named_in_one_line(
    stack: Stack, database_url: str, message: str
) -> None:
    (RUN_DATA_DIR / "not-a-dir.csv").write_text("a file, not a folder\n")
    done = run_cli("jobs", env={**stack.env, "BATCHAPP_DATABASE_URL": database_url})

    [line] = done.stderr.strip().splitlines()
    assert done.returncode == 1
    assert line.startswith("Error: ")
    assert message in line
    assert "s3cret" not in line and "broker" not in line
