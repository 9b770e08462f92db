"""A team's own jobs, in a module outside batchapp, run through BATCHAPP_JOBS on real workers,
on the SQLite ledger and on PostgreSQL, and show in the job-types listing beside the built-ins."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Stack, stack_with_jobs
from tests.support import run_cli


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def own_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from stack_with_jobs(request, "tests.acme_jobs")


def test_a_short_form_job_runs_on_a_worker(own_stack: Stack) -> None:
    done = run_cli(
        "submit",
        "acme.cubes",
        "n=1000",
        "size=70",
        "--wait",
        "--timeout",
        "120",
        "--json",
        env=own_stack.env,
    )
    view = json.loads(done.stdout)

    assert done.returncode == 0, done.stderr
    assert (view["status"], view["result"]) == ("succeeded", (1000 * 1001 // 2) ** 2)
    assert view["chunks"]["total"] == 15


def test_a_full_control_job_runs_and_a_bad_value_is_one_line(own_stack: Stack) -> None:
    done = run_cli(
        "submit",
        "acme.squares",
        "n=2500",
        "--wait",
        "--timeout",
        "120",
        "--json",
        env=own_stack.env,
    )
    bad = run_cli("submit", "acme.squares", "n=many", env=own_stack.env)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == sum(i * i for i in range(1, 2501))
    assert (bad.returncode, bad.stderr.strip()) == (
        1,
        "Error: acme.squares: bad parameters (ValueError: invalid literal for int() with "
        "base 10: 'many')",
    )


def test_job_types_shows_own_jobs_beside_the_built_ins(own_stack: Stack) -> None:
    listed = json.loads(run_cli("job-types", "--json", env=own_stack.env).stdout)
    origins = {t["name"]: t["origin"] for t in listed}

    assert origins["acme.cubes"] == origins["acme.squares"] == "module tests.acme_jobs"
    assert origins["parallel_sum"] == "built-in"
