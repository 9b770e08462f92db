"""The web UI without services: Starlette's TestClient on an SQLite ledger of its own."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine
from starlette.testclient import TestClient

from batchapp import ledger, runtime
from batchapp.celery import settings
from batchapp.cli.commands import main
from batchapp.jobs import JobContext
from batchapp.settings import SettingsError, load
from batchapp.storage.engines import engine_for
from batchapp.web import csrf
from batchapp.web.app import create_app
from batchapp.web.passwords import hash_password, verify_password
from tests.support import run_cli

SECRET = b"s" * 32
SITE = "http://testserver"
HOSTILE_FILE = "<img src=x onerror=alert(1)>.csv"
HOSTILE_ROW = "<script>alert(1)</script>,2026-11-25T09:00:00+09:00,S1,K1,1,1.00"


def published(job_id: str, indexes: Sequence[int]) -> None:
    """The broker's stand-in: the unit tier publishes nothing."""


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobContext:
    """This process's job context, on a ledger of the test's own."""
    url = f"sqlite:///{tmp_path / 'web.sqlite'}"
    context = JobContext(
        settings=replace(settings, database_url=url, data_dir=tmp_path), engine=engine_for(url)
    )
    monkeypatch.setattr(runtime, "_context", context)
    return context


@pytest.fixture
def client(ctx: JobContext) -> Iterator[TestClient]:
    with TestClient(create_app({}, SECRET), follow_redirects=False) as test_client:
        yield test_client


def submit(ctx: JobContext, name: str = "parallel_sum", **params: object) -> str:
    return ledger.submit(ctx, name, params or {"n": 0}, published).id


def token(client: TestClient, path: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def test_the_list_is_newest_first_filtered_and_paginated(
    ctx: JobContext, client: TestClient
) -> None:
    finished = [submit(ctx) for _ in range(26)]
    running = submit(ctx, n=10, chunk_size=5)

    page_one = client.get("/jobs").text
    page_two = client.get("/jobs?page=2").text
    only_running = client.get("/jobs?status=running").text
    other_job = client.get("/jobs?job=report").text

    assert page_one.index(running[:12]) < page_one.index(finished[-1][:12])
    assert finished[0][:12] not in page_one and finished[0][:12] in page_two
    assert 'rel="next"' in page_one and 'rel="next"' not in page_two
    assert running[:12] in only_running and finished[-1][:12] not in only_running
    assert "No jobs match" in other_job


def test_json_api_objects_are_the_cli_json_objects(ctx: JobContext, client: TestClient) -> None:
    job_id = submit(ctx, n=10, chunk_size=5)
    ledger.run_chunk(ctx, job_id, 0)
    ledger.record_chunk_failure(ctx, job_id, 1, "boom")
    env = {**os.environ, "BATCHAPP_DATABASE_URL": ctx.settings.database_url}

    status = run_cli("status", job_id, "--json", env=env)
    jobs = run_cli("jobs", "--limit", "5", "--json", env=env)

    assert status.returncode == 0, status.stderr
    assert client.get(f"/api/jobs/{job_id}").json() == json.loads(status.stdout)
    assert client.get("/api/jobs?limit=5").json() == json.loads(jobs.stdout)


def test_job_page_shows_parameters_errors_and_rejects_as_text(
    ctx: JobContext, client: TestClient
) -> None:
    header = "order_id,sold_at,store,sku,quantity,unit_price"
    (ctx.settings.data_dir / HOSTILE_FILE).write_text(f"{header}\n{HOSTILE_ROW}\n")
    job_id = submit(ctx, "import_csv", path=HOSTILE_FILE)
    ledger.record_chunk_failure(ctx, job_id, 0, "<script>alert('error')</script>")
    other = submit(ctx, "import_csv", path=HOSTILE_FILE)
    ledger.run_chunk(ctx, other, 0)

    failed_page = client.get(f"/jobs/{job_id}").text
    rejects_page = client.get(f"/jobs/{other}").text

    assert "<script>alert" not in failed_page + rejects_page
    assert "<img src=x" not in failed_page + rejects_page
    assert "&lt;img src=x onerror=alert(1)&gt;.csv" in failed_page
    assert "&lt;script&gt;alert(&#39;error&#39;)&lt;/script&gt;" in failed_page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rejects_page  # the reject's raw line


def test_pages_forbid_inline_scripts(client: TestClient) -> None:
    policy = client.get("/jobs").headers["content-security-policy"]

    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_cancel_asks_first_then_cancels_on_a_post_with_its_token(
    ctx: JobContext, client: TestClient
) -> None:
    job_id = submit(ctx, n=10, chunk_size=5)

    asked = client.get(f"/jobs/{job_id}/cancel")
    assert asked.status_code == 200 and "Yes, cancel" in asked.text
    assert ledger.get(ctx, job_id).status == "running"

    done = client.post(
        f"/jobs/{job_id}/cancel",
        data={"csrf_token": token(client, f"/jobs/{job_id}/cancel")},
        headers={"Origin": SITE},
    )

    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}?did=cancel"
    assert ledger.get(ctx, job_id).status == "cancelled"


@pytest.mark.parametrize(
    ("fields", "headers", "says"),
    [
        ({}, {"Origin": SITE}, "no valid CSRF token"),
        ({"csrf_token": "123.abc"}, {"Origin": SITE}, "wrong or expired"),
        ({"csrf_token": None}, {"Origin": "http://evil.example"}, "must come from this site"),
        ({"csrf_token": None}, {}, "must come from this site"),
    ],
    ids=["no-token", "forged-token", "other-origin", "no-origin"],
)
def test_a_post_without_a_valid_token_or_from_elsewhere_is_refused(
    ctx: JobContext,
    client: TestClient,
    fields: dict[str, str | None],
    headers: dict[str, str],
    says: str,
) -> None:
    job_id = submit(ctx, n=10, chunk_size=5)
    form = {k: v or token(client, "/submit") for k, v in fields.items()}

    refused = client.post(f"/jobs/{job_id}/cancel", data=form, headers=headers)

    assert refused.status_code == 403
    assert says in refused.text and "Traceback" not in refused.text
    assert ledger.get(ctx, job_id).status == "running"


def test_an_expired_token_is_refused() -> None:
    old = csrf.make_token(SECRET, "ann", now=1_000_000)

    with pytest.raises(csrf.CsrfError, match="expired"):
        csrf.check_token(SECRET, "ann", old, now=1_000_000 + csrf.MAX_AGE_S + 1)
    with pytest.raises(csrf.CsrfError):
        csrf.check_token(SECRET, "bob", old, now=1_000_001)  # another user's token


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/jobs/0123456789abcdef0123456789abcdef", 404, "no job with id"),
        ("/jobs/..%2Fetc", 404, "no job with id"),
        ("/jobs?page=x", 400, "page must be a whole number"),
        ("/jobs?page=0", 400, "page must be a whole number"),
        ("/jobs?status=lost", 400, "status must be one of"),
        ("/api/jobs?limit=100000", 400, "limit must be a whole number"),
        ("/api/jobs/0123456789abcdef0123456789abcdef", 404, "no job with id"),
        ("/jobs/0123456789abcdef0123456789abcdef/explode", 404, "no action"),
        ("/nowhere", 404, "404: Not Found"),
    ],
)
def test_bad_ids_and_parameters_get_a_4xx_with_one_line(
    client: TestClient, path: str, status: int, says: str
) -> None:
    response = client.get(path)

    assert response.status_code == status
    if path.startswith("/api/"):
        assert says in response.json()["error"]
    else:
        [line] = re.findall(r'<p class="error" id="error">(.*)</p>', response.text)
        assert says in line and "Traceback" not in response.text


def test_a_bad_submit_is_a_400_naming_the_parameter(client: TestClient) -> None:
    response = client.post(
        "/submit",
        data={"csrf_token": token(client, "/submit"), "job": "parallel_sum", "params": "n=-1"},
        headers={"Origin": SITE},
    )

    assert response.status_code == 400
    assert "parallel_sum: n must be" in response.text


def test_submit_shows_what_it_will_submit_before_it_does(
    ctx: JobContext, client: TestClient
) -> None:
    response = client.post(
        "/submit",
        data={"csrf_token": token(client, "/submit"), "job": "parallel_sum", "params": "n=5"},
        headers={"Origin": SITE},
    )

    assert response.status_code == 200 and "Yes, submit" in response.text
    assert 'name="confirmed" value="yes"' in response.text
    assert ledger.recent(ctx) == []


def basic(name: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def test_with_users_every_request_needs_a_right_password(ctx: JobContext) -> None:
    users = {"ann": hash_password("correct horse", n=2**10)}
    with TestClient(create_app(users, SECRET)) as client:
        assert client.get("/jobs").status_code == 401
        assert client.get("/api/jobs", headers=basic("ann", "wrong")).status_code == 401
        assert client.get("/jobs", headers=basic("bob", "correct horse")).status_code == 401
        assert client.get("/jobs", headers=basic("ann", "correct horse")).status_code == 200
        refused = client.get("/metrics")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith(
            "Basic"
        )


def test_healthz_answers_without_a_login_and_tells_only_whether_the_ledger_answers(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = {"ann": hash_password("correct horse", n=2**10)}
    with TestClient(create_app(users, SECRET)) as client:
        healthy = client.get("/healthz")
        # A ledger in a folder that does not exist: SQLite cannot open it.
        unreachable = create_engine("sqlite:////nonexistent-batchapp-dir/ledger.sqlite")
        monkeypatch.setattr(runtime, "_context", replace(ctx, engine=unreachable))
        broken = client.get("/healthz")

    assert (healthy.status_code, healthy.text) == (200, "ok\n")
    assert broken.status_code == 503
    assert broken.text.startswith("cannot use the database at ") and broken.text.count("\n") == 1


def test_web_password_prints_a_hash_that_checks_the_password() -> None:
    result = CliRunner().invoke(main, ["web-password"], input="long enough\nlong enough\n")

    hashed = result.output.strip().splitlines()[-1]
    assert result.exit_code == 0
    assert verify_password("long enough", hashed) and not verify_password("other", hashed)


def test_web_users_are_checked_and_their_hashes_never_shown() -> None:
    hashed = hash_password("long enough", n=2**10)
    users = load({"BATCHAPP_WEB_USERS": f"ann:{hashed}"})

    assert users.web_users == (("ann", hashed),)
    assert hashed not in repr(users)
    with pytest.raises(SettingsError, match="BATCHAPP_WEB_USERS") as error:
        load({"BATCHAPP_WEB_USERS": f"ann:{hashed[:-5]}!!"})
    assert hashed[:20] not in str(error.value)


def test_a_bind_beyond_loopback_without_users_is_refused_in_one_line(
    cli_env: dict[str, str],
) -> None:
    refused = run_cli("web", "--host", "0.0.0.0", "--port", "8999", env=cli_env)

    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "Error: refusing to serve on 0.0.0.0 without users: set BATCHAPP_WEB_USERS "
        "(see `batchapp web-password`) or bind 127.0.0.1"
    ]


def test_a_stored_entry_is_paused_and_resumed_through_confirmed_posts(
    ctx: JobContext, client: TestClient
) -> None:
    from batchapp import service

    service.schedule_add("nightly", "parallel_sum", {"n": "5"}, every_s="3600")

    page = client.get("/schedule").text
    asked = client.get("/schedule/nightly/pause")
    paused = client.post(
        "/schedule/nightly/pause",
        data={"csrf_token": token(client, "/schedule/nightly/pause")},
        headers={"Origin": SITE},
    )

    assert "No beat holds the lease" in page and "/schedule/nightly/pause" in page
    assert asked.status_code == 200 and "Yes, pause" in asked.text
    assert paused.status_code == 303
    assert "paused" in client.get("/schedule").text
    assert next(e for e in service.schedule()[0] if e.name == "nightly").paused
    assert client.get("/schedule/calculate-sum/pause").status_code == 404  # an entry in code
