"""The batchapp command: bad input gets one line and a non-zero exit; listings read well.

Nothing here reaches the broker; tests/integration/test_cli.py runs jobs through a worker and
names a database that fails on a live PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from batchapp.cli.commands import _errors_as_one_line as errors_as_one_line
from batchapp.cli.commands import main
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema
from tests.support import run_cli
from tests.unit.conftest import RUN_DATA_DIR


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "nosuch"], "unknown job 'nosuch' (known: "),
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
def test_bad_input_is_one_line_and_a_failure(
    cli_env: dict[str, str], args: list[str], message: str
) -> None:
    done = run_cli(*args, env=cli_env)

    [line] = done.stderr.strip().splitlines()
    assert done.returncode != 0
    assert line.startswith("Error: ")
    assert message in line


def test_an_unknown_job_is_named_beside_every_known_one(cli_env: dict[str, str]) -> None:
    done = run_cli("submit", "nosuch", env=cli_env)
    found = re.fullmatch(r"Error: unknown job 'nosuch' \(known: (.+)\)", done.stderr.strip())

    assert found, done.stderr
    known = found.group(1).split(", ")
    # The built-in jobs, and those of installed packages (the suite installs examples/wordcount).
    assert known == sorted(known)
    assert set(known) >= {"cleanup", "import_csv", "parallel_sum", "report"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "parallel_sum", "n=--5"], "parallel_sum: n must be an integer, got '--5'"),
        (
            ["submit", "parallel_sum", "n=5", "chunk_size=--3"],
            "parallel_sum: chunk_size must be an integer, got '--3'",
        ),
        (["submit", "parallel_sum", "n=" + "9" * 5_000], "n must be an integer, got '99999"),
        (["submit", "parallel_sum", "n=\u0661\u0662"], "n must be an integer"),
        (["submit", "parallel_sum", "n=5", "--timeout", "nan"], "expected a finite number"),
        (["submit", "parallel_sum", "n=5", "--timeout", "0"], "Invalid value for '--timeout'"),
        (["submit"], "Missing argument 'JOB'. (see batchapp submit --help)"),
        (["jobs", "--limit", "many"], "'many' is not a valid integer"),
        (["nosuch"], "No such command 'nosuch'"),
        (["sample-csv", "s.csv", "2000000000"], "Invalid value for 'ROWS'"),
        (["sample-csv", "s.csv", "10", "--bad", "nan"], "expected a finite number"),
        (["sample-csv", "not-a-dir.csv/s.csv", "10"], "cannot write"),
    ],
)
def test_every_argument_and_flag_fails_in_one_line(args: list[str], message: str) -> None:
    (RUN_DATA_DIR / "not-a-dir.csv").write_text("a file, not a folder\n")
    done = CliRunner().invoke(main, args, prog_name="batchapp")

    [line] = done.stderr.strip().splitlines()
    assert done.exit_code in (1, 2)
    assert line.startswith("Error: ")
    assert message in line
    assert len(line) < 300


def test_bad_setting_is_one_line(cli_env: dict[str, str]) -> None:
    done = run_cli("jobs", env={**cli_env, "BATCHAPP_TIMEZONE": "Nowhere/Land"})

    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "batchapp: BATCHAPP_TIMEZONE: unknown timezone 'Nowhere/Land' (expected an IANA name "
        "such as Asia/Seoul)"
    ]


def test_a_data_folder_that_cannot_be_made_is_one_line(cli_env: dict[str, str]) -> None:
    blocker = RUN_DATA_DIR / "a-file"
    blocker.write_text("not a folder\n")
    done = run_cli("jobs", env={**cli_env, "BATCHAPP_DATA_DIR": str(blocker / "data")})

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"batchapp: BATCHAPP_DATA_DIR: cannot create {str(blocker / 'data')!r}: Not a directory"
    ]


def test_bad_csv_header_is_refused_at_submit(cli_env: dict[str, str]) -> None:
    (RUN_DATA_DIR / "cols.csv").write_text("order_id,sold_at,store\nS-1,2026-11-25,ST\n")
    done = run_cli("submit", "import_csv", "path=cols.csv", env=cli_env)

    assert done.returncode != 0
    assert "missing column(s) sku, quantity, unit_price" in done.stderr


@pytest.mark.parametrize("names", [500, 20_000])
def test_a_huge_bad_header_is_refused_in_one_short_line(names: int) -> None:
    header = ",".join(f"column_number_{i}" for i in range(names))
    (RUN_DATA_DIR / "wide.csv").write_text(header + "\nS-1\n")
    done = CliRunner().invoke(main, ["submit", "import_csv", "path=wide.csv"])

    [line] = done.stderr.strip().splitlines()
    assert done.exit_code == 1
    assert line.startswith("Error: import_csv: wide.csv: ")
    assert len(header) > 8_000 and len(line) < 600


def test_empty_csv_is_refused_at_submit(cli_env: dict[str, str]) -> None:
    (RUN_DATA_DIR / "empty.csv").write_bytes(b"")
    done = run_cli("submit", "import_csv", "path=empty.csv", env=cli_env)

    assert "empty.csv is empty (expected a header line)" in done.stderr


def test_schedule_lists_every_entry_with_its_next_run_in_seoul(cli_env: dict[str, str]) -> None:
    entries = json.loads(run_cli("schedule", "--json", env=cli_env).stdout)
    table = run_cli("schedule", env=cli_env).stdout

    # batchapp's own code entries, and those of the jobs installed beside it (the suite installs
    # the example project, which declares one).
    code = {e["name"] for e in entries if e["source"] == "code"}
    own = {"calculate-sum", "sales-report", "reconcile", "cleanup"}
    job_names = {t["name"] for t in json.loads(run_cli("job-types", "--json", env=cli_env).stdout)}
    assert own <= code and code - own <= job_names
    assert all(e["timezone"] == "Asia/Seoul" for e in entries)
    assert "NEXT RUN (Asia/Seoul)" in table
    assert "batchapp.tasks.calculate_sum  [100]" in table


def test_sample_csv_writes_the_rows_it_says(cli_env: dict[str, str]) -> None:
    done = run_cli("sample-csv", "gen.csv", "500", "--bad", "0.1", env=cli_env)
    lines = (RUN_DATA_DIR / "gen.csv").read_text().splitlines()

    assert done.returncode == 0
    assert len(lines) == 501
    assert "500 rows" in done.stdout


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "cannot reach the broker at amqp://"),
        (
            FileExistsError(17, "File exists", str(RUN_DATA_DIR)),
            f"cannot use the database at sqlite:///{RUN_DATA_DIR / 'caller.sqlite'}: ",
        ),
        (
            PermissionError(13, "Permission denied", "/srv/sales.csv"),
            "cannot access /srv/sales.csv: Permission denied",
        ),
    ],
)
def test_an_os_error_blames_what_it_names(error: OSError, message: str) -> None:
    with pytest.raises(click.ClickException) as raised, errors_as_one_line():
        raise error

    assert raised.value.message.startswith(message)
    assert "guest:guest" not in raised.value.message


def sample_csv(*args: str) -> Result:
    return CliRunner().invoke(main, ["sample-csv", *args], prog_name="batchapp")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sample_csv_never_overwrites_the_ledger_even_when_forced() -> None:
    ledger_file = RUN_DATA_DIR / "caller.sqlite"  # this process's BATCHAPP_DATABASE_URL
    ensure_schema(engine_for(f"sqlite:///{ledger_file}"))
    before = digest(ledger_file)
    wal = RUN_DATA_DIR / "caller.sqlite-wal"

    refused = [
        (ledger_file, sample_csv(ledger_file.name, "3")),
        (ledger_file, sample_csv(str(ledger_file), "3", "--force")),
        (wal, sample_csv(wal.name, "3", "--force")),
    ]

    assert digest(ledger_file) == before
    for path, done in refused:
        assert done.exit_code == 1
        assert done.stderr.strip().splitlines() == [
            f"Error: {path} is one of batchapp's databases; it is never overwritten"
        ]


def test_sample_csv_overwrites_only_its_own_files_unless_forced() -> None:
    notes = RUN_DATA_DIR / "notes.csv"
    notes.write_text("my own notes\n")
    other_db = RUN_DATA_DIR / "other.db"
    other_db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)

    refused = sample_csv("notes.csv", "3")
    kept = notes.read_text()
    forced = sample_csv("notes.csv", "3", "--force")
    again = sample_csv("notes.csv", "5")
    database = sample_csv("other.db", "3", "--force")

    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines() == [
        f"Error: {notes} exists and is not a sample CSV; add --force to overwrite it"
    ]
    assert kept == "my own notes\n"
    assert forced.exit_code == 0 and again.exit_code == 0
    assert len(notes.read_text().splitlines()) == 6
    assert database.exit_code == 1
    assert "is an SQLite database; it is never overwritten" in database.stderr
    assert other_db.read_bytes().startswith(b"SQLite format 3\x00")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "Error: key must be 1 to 200 characters, got 0"),
        ("k" * 300, "Error: key must be 1 to 200 characters, got 300"),
        ("a\tb", "Error: key must be printable, with no space at either end, got 'a\\tb'"),
    ],
)
def test_a_bad_key_is_one_line(cli_env: dict[str, str], key: str, message: str) -> None:
    done = run_cli("submit", "parallel_sum", "n=0", "--key", key, env=cli_env)

    assert done.returncode == 1
    assert done.stderr.splitlines() == [message]


def test_submit_with_a_key_twice_returns_the_first_job(cli_env: dict[str, str]) -> None:
    # n=0 plans no chunk, so nothing is published: the job succeeds at submit.
    first = json.loads(
        run_cli("submit", "parallel_sum", "n=0", "--key", "day 1", "--json", env=cli_env).stdout
    )
    again = json.loads(
        run_cli("submit", "parallel_sum", "n=0", "--key", "day 1", "--json", env=cli_env).stdout
    )
    text = run_cli("submit", "parallel_sum", "n=0", "--key", "day 1", env=cli_env)

    assert (first["key"], first["existing"], first["status"]) == ("day 1", False, "succeeded")
    assert (again["id"], again["key"], again["existing"]) == (first["id"], "day 1", True)
    assert text.stdout.splitlines()[:2] == [
        f"job {first['id']} already succeeded with key day 1",
        f"job {first['id']}  parallel_sum  succeeded",
    ]
    assert "  key      day 1" in text.stdout


def test_status_shows_each_execution_after_a_failed_chunk_and_a_retry(
    cli_env: dict[str, str],
) -> None:
    from batchapp import ledger
    from batchapp.jobs import JobContext
    from batchapp.settings import load

    settings = load({**cli_env})
    ctx = JobContext(settings=settings, engine=engine_for(settings.database_url))
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, lambda *_: None)
    ledger.run_chunk(ctx, view.id, 0)
    ledger.record_chunk_failure(ctx, view.id, 1, "disk on fire")
    ledger.retry(ctx, view.id, lambda *_: None)

    running = json.loads(run_cli("status", view.id, "--json", env=cli_env).stdout)
    ledger.run_chunk(ctx, view.id, 1)
    done = json.loads(run_cli("status", view.id, "--json", env=cli_env).stdout)
    text = run_cli("status", view.id, env=cli_env).stdout

    assert [(e["number"], e["outcome"]) for e in running["executions"]] == [
        (1, "failed"),
        (2, "running"),
    ]
    first, second = done["executions"]
    assert first["started_by"] == "submit" and second["started_by"] == "retry"
    assert (first["outcome"], first["chunks"], first["error"]) == (
        "failed",
        {"done": 1, "failed": 1},
        "1 chunk(s) failed; chunk 1: disk on fire",
    )
    assert (second["outcome"], second["chunks"], second["error"]) == (
        "succeeded",
        {"done": 1, "failed": 0},
        None,
    )
    assert (
        second["finished_at"] == done["finished_at"] and first["started_at"] == done["created_at"]
    )
    lines = text.splitlines()
    runs = lines[lines.index("executions:") + 1 :]
    assert runs[0].split()[:6] == ["#1", "submit", "failed", "1", "done,", "1"]
    assert runs[1].split()[:6] == ["#2", "retry", "succeeded", "1", "done,", "0"]


def test_status_says_how_many_failed_chunks_it_does_not_list(cli_env: dict[str, str]) -> None:
    from batchapp import ledger
    from batchapp.jobs import JobContext
    from batchapp.settings import load

    settings = load({**cli_env})
    ctx = JobContext(settings=settings, engine=engine_for(settings.database_url))
    view = ledger.submit(ctx, "parallel_sum", {"n": 25, "chunk_size": 1}, lambda *_: None)
    for index in range(25):
        ledger.record_chunk_failure(ctx, view.id, index, f"disk {index} on fire")

    shown = json.loads(run_cli("status", view.id, "--json", env=cli_env).stdout)
    text = run_cli("status", view.id, env=cli_env).stdout

    assert [c["index"] for c in shown["failed_chunks"]] == list(range(20))
    assert shown["failed_chunks"][3] == {"index": 3, "attempts": 1, "error": "disk 3 on fire"}
    assert shown["failed_chunks_not_listed"] == 5
    lines = text.splitlines()
    listed = lines[lines.index("failed chunks:") + 1 :]
    assert listed[0] == "  #0 (attempts 1): disk 0 on fire"
    assert listed[20:] == ["  ... and 5 more, not listed"]
