"""A team's declared table import (tests/acme_tables.py) run through BATCHAPP_JOBS on real
workers, on the SQLite ledger and on PostgreSQL: rows, rejects, repeated keys, re-imports."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime
from typing import Any

import pytest
from sqlalchemy import select

from batchapp import csv_import, ledger
from batchapp.celery import settings as app_settings
from batchapp.jobs import JobContext, import_rows
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema, import_rejects
from tests.acme_tables import orders
from tests.integration.conftest import RUN_DATA_DIR, Stack, stack_with_jobs
from tests.support import run_cli

HEADER = "note,id,qty,price,placed_at,due,gift\n"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def own_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from stack_with_jobs(request, "tests.acme_tables")


def submit(stack: Stack, name: str) -> dict[str, Any]:
    done = run_cli(
        "submit",
        "acme.orders",
        f"path={name}",
        "chunk_rows=2",
        "--wait",
        "--timeout",
        "120",
        "--json",
        env=stack.env,
    )
    assert done.returncode == 0, done.stderr
    view: dict[str, Any] = json.loads(done.stdout)
    return view


def stored(stack: Stack, job_id: str) -> tuple[dict[str, Any], dict[int, str]]:
    return stored_in(stack.ctx, job_id)


def stored_in(ctx: JobContext, job_id: str) -> tuple[dict[str, Any], dict[int, str]]:
    table = orders.spec.table
    with ctx.engine.connect() as connection:
        rows = connection.execute(select(table).where(table.c.batch_job_id == job_id))
        held = {row.id: row for row in rows}
        rejects = connection.execute(
            select(import_rejects.c.line, import_rejects.c.reason).where(
                import_rejects.c.job_id == job_id
            )
        )
        return held, {line: reason for line, reason in rejects}


def write(lines: list[str]) -> str:
    name = f"orders-{uuid.uuid4().hex[:8]}.csv"
    (RUN_DATA_DIR / name).write_text(HEADER + "".join(f"{line}\n" for line in lines))
    return name


def test_a_declared_import_fills_the_teams_table_and_rejects_by_line(own_stack: Stack) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    name = write(
        [
            f'"wrapped, gift",{tag}-1,2,19.90,2026-11-25T09:00:00+09:00,2026-12-01,yes',
            f",{tag}-2,1,5,2026-11-25 09:00:00,,",
            f",{tag}-3,0,5,2026-11-25T09:00:00,,",
            f",{tag}-1,9,1.00,2026-11-25T09:00:00,,",
            f",{tag}-4,1,5.001,2026-11-25T09:00:00,,",
            # Letters of its own: a tag of hex digits alone has no case to lower.
            f",low-{tag}-5,1,5,2026-11-25T09:00:00,,",
            f",{tag}-6,1,5,2026-11-25T09:00:00,2026-02-30,",
            f",{tag}-7,3,0.25,2026-11-25T09:00:00,,no",
        ]
    )
    view = submit(own_stack, name)
    held, rejected = stored(own_stack, view["id"])

    assert view["result"] == {"rows": 8, "imported": 3, "rejected": 5, "new": 3, "duplicates": 0}
    assert rejected == {
        4: "qty: must be between 1 and 1,000, got 0",
        5: f"id '{tag}-1' repeats line 2 (a file may hold an id once)",
        6: "price: expected a decimal with at most 2 places, got '5.001'",
        7: f"id: does not match the pattern '[A-Z0-9-]+': 'low-{tag}-5'",
        8: "due: expected a date YYYY-MM-DD, got '2026-02-30'",
    }
    first, plain, last = held[f"{tag}-1"], held[f"{tag}-2"], held[f"{tag}-7"]
    assert (first.note, first.qty, first.price, first.total_cents) == (
        "wrapped, gift",
        2,
        1990,
        3980,
    )
    assert (first.due, first.gift, first.batch_line) == (date(2026, 12, 1), True, 2)
    assert (plain.note, plain.due, plain.gift, plain.price) == (None, None, None, 500)
    assert (last.gift, last.total_cents, last.batch_line) == (False, 75, 9)


def test_a_re_import_adds_nothing(own_stack: Stack) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    name = write([f",{tag}-{i},1,1.00,2026-11-25T09:00:00,," for i in range(5)])

    first = submit(own_stack, name)
    again = submit(own_stack, name)

    assert first["result"] == {"rows": 5, "imported": 5, "rejected": 0, "new": 5, "duplicates": 0}
    assert again["result"] == {"rows": 5, "imported": 5, "rejected": 0, "new": 0, "duplicates": 5}
    assert len(stored(own_stack, first["id"])[0]) == 5
    assert stored(own_stack, again["id"]) == ({}, {})


def test_a_bad_header_is_one_line_and_the_import_is_listed(own_stack: Stack) -> None:
    (RUN_DATA_DIR / "orders-bad-header.csv").write_text("id,qty,price,extra\n")

    bad = run_cli("submit", "acme.orders", "path=orders-bad-header.csv", env=own_stack.env)
    listed = json.loads(run_cli("job-types", "--json", env=own_stack.env).stdout)

    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "Error: acme.orders: orders-bad-header.csv: bad header: missing column(s) placed_at, "
        "due, gift, note; unknown column(s) 'extra' "
        "(expected id,qty,price,placed_at,due,gift,note)"
    )
    assert {t["name"]: t["origin"] for t in listed}["acme.orders"] == "module tests.acme_tables"


def test_chunks_in_any_order_copy_into_postgresql_with_the_same_outcome(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run here, chunk by chunk, last first: every chunk goes through COPY and a staging table,
    and a key repeated across and within chunks still keeps its first line."""
    ctx = JobContext(
        settings=replace(app_settings, database_url=postgres_url, timezone="America/New_York"),
        engine=engine_for(postgres_url),
    )
    ensure_schema(ctx.engine)
    copied: list[int] = []
    real_copy = import_rows.copy_rows

    def counting_copy(*args: Any) -> int:
        copied.append(len(args[-1]))
        return real_copy(*args)

    monkeypatch.setattr(import_rows, "copy_rows", counting_copy)
    tag = uuid.uuid4().hex[:6].upper()
    row = ",{0},1,1.00,2026-03-08T01:30:00,,{1}"
    name = write(
        [
            row.format(f"{tag}-A", "yes"),
            row.format(f"{tag}-B", "yes"),
            row.format(f"{tag}-B", "no"),
            row.format(f"{tag}-A", "no"),
            row.format(f"{tag}-C", "yes"),
            row.format(f"{tag}-C", "no"),
        ]
    )
    view = ledger.submit(ctx, "acme.orders", {"path": name, "chunk_rows": 2}, lambda *_: None)
    for index in (2, 1, 0):
        ledger.run_chunk(ctx, view.id, index)
    again = ledger.submit(ctx, "acme.orders", {"path": name, "chunk_rows": 4}, lambda *_: None)
    for index in (1, 0):
        ledger.run_chunk(ctx, again.id, index)
    held, rejected = stored_in(ctx, view.id)

    assert copied == [2, 2, 2, 2, 4]
    assert ledger.get(ctx, view.id).result == {
        **{"rows": 6, "imported": 3, "rejected": 3, "new": 3, "duplicates": 0}
    }
    # Rows of earlier imports are not read (a re-import stays fast): every line is a duplicate.
    assert ledger.get(ctx, again.id).result == {
        **{"rows": 6, "imported": 6, "rejected": 0, "new": 0, "duplicates": 6}
    }
    assert {key: (row.batch_line, row.gift) for key, row in held.items()} == {
        f"{tag}-A": (2, True),
        f"{tag}-B": (3, True),
        f"{tag}-C": (6, True),
    }
    assert held[f"{tag}-A"].placed_at == datetime(2026, 3, 8, 6, 30)
    assert rejected == {
        4: f"id '{tag}-B' repeats line 3 (a file may hold an id once)",
        5: f"id '{tag}-A' repeats line 2 (a file may hold an id once)",
        7: f"id '{tag}-C' repeats line 6 (a file may hold an id once)",
    }


def test_a_hand_made_postgresql_table_of_other_column_types_still_takes_the_rows(
    postgres_url: str,
) -> None:
    """Binary COPY is for the types batchapp creates; a table made by hand with numeric and
    timestamptz columns gets the rows by text COPY, converted as an INSERT would."""
    ctx = JobContext(
        settings=replace(app_settings, database_url=postgres_url, timezone="America/New_York"),
        engine=engine_for(postgres_url),
    )
    ensure_schema(ctx.engine)
    table = f"hand_orders_{uuid.uuid4().hex[:8]}"
    with ctx.engine.begin() as connection:
        connection.exec_driver_sql(
            f"CREATE TABLE {table} (id text PRIMARY KEY, qty numeric NOT NULL, "
            "price numeric(12, 0) NOT NULL, placed_at timestamptz NOT NULL, due date, gift bool, "
            "note varchar(40), total_cents numeric NOT NULL, batch_job_id text NOT NULL, "
            "batch_line bigint NOT NULL)"
        )
    job = csv_import(
        "test.hand_orders",
        table=table,
        columns=orders.spec.columns,
        derived=orders.spec.derived,
        register=False,
    )
    name = write(
        [
            "hi,K-1,3,19.90,2026-03-08T01:30:00,2026-04-01,yes",
            ",K-2,1,0.05,2026-03-09T12:00:00-05:00,,",
        ]
    )
    params = job.parse_params({"path": name, "chunk_rows": 10}, ctx)
    (spec,) = job.plan(params, ctx)
    prepared = job.prepare(params, spec, ctx)
    with ctx.engine.begin() as connection:
        written = import_rows.write_chunk(connection, job.spec, "hand-made", prepared)
        got = connection.exec_driver_sql(
            f"SELECT id, qty, price, placed_at AT TIME ZONE 'UTC', due, gift, note, total_cents, "
            f"batch_line FROM {table} ORDER BY id"
        ).all()
        connection.exec_driver_sql(f"DROP TABLE {table}")

    assert written.imported == 2
    assert [tuple(row) for row in got] == [
        ("K-1", 3, 1990, datetime(2026, 3, 8, 6, 30), date(2026, 4, 1), True, "hi", 5970, 2),
        ("K-2", 1, 5, datetime(2026, 3, 9, 17, 0), None, None, None, 5, 3),
    ]
