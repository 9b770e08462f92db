"""Declared CSV imports: declaration errors, registration, and an import run chunk by chunk in
this process on SQLite (tests/integration/test_table_import.py runs one on real workers)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select

from batchapp import (
    JOBS,
    CsvBool,
    CsvColumn,
    CsvDate,
    CsvDecimal,
    CsvInt,
    CsvText,
    CsvTimestamp,
    DeclarationError,
    Derived,
    JobRegistryError,
    ParamError,
    TableImport,
    csv_import,
    ledger,
)
from batchapp.celery import settings as app_settings
from batchapp.jobs import JobContext
from batchapp.jobs.csv_rows import LineParser
from batchapp.jobs.discovery import DiscoveryError, discover
from batchapp.jobs.registry import JobRegistry
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema, import_rejects
from tests.hostile import field
from tests.unit.conftest import RUN_DATA_DIR

NAME = "test.orders"
TABLE = "test_orders"
HEADER = "id,qty,price,placed_at,due,gift\n"


def columns() -> list[CsvColumn]:
    return [
        CsvColumn("id", CsvText(max_len=16), key=True),
        CsvColumn("qty", CsvInt(min=1, max=100)),
        CsvColumn("price", CsvDecimal(places=2, max="1000.00")),
        CsvColumn("placed_at", CsvTimestamp()),
        CsvColumn("due", CsvDate(), optional=True),
        CsvColumn("gift", CsvBool(), optional=True),
    ]


DERIVED = [
    Derived("total_cents", CsvInt(min=0), lambda row: row["qty"] * row["price"]),
    Derived("placed_on", CsvDate(), lambda row: row["placed_at"].date()),
]


def declare(**changes: Any) -> TableImport:
    options: dict[str, Any] = {"table": TABLE, "columns": columns(), "derived": DERIVED}
    return csv_import(NAME, **{**options, **changes, "register": False})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"columns": []}, "declare at least one column"),
        ({"columns": [CsvColumn("id", int, key=True)]}, "column 'id' has unknown type"),  # type: ignore[arg-type]
        (
            {"columns": [CsvColumn("a", CsvInt(), key=True), CsvColumn("b", CsvInt(), key=True)]},
            "declare exactly one key column (key=True), got 'a', 'b'",
        ),
        (
            {"columns": [CsvColumn("a", CsvInt())]},
            "declare exactly one key column (key=True), got none",
        ),
        (
            {"columns": [CsvColumn("a", CsvInt(), key=True, optional=True)]},
            "key column 'a' cannot be optional",
        ),
        (
            {"columns": [*columns(), CsvColumn("batch_line", CsvInt())]},
            "column 'batch_line' clashes with batchapp's bookkeeping columns",
        ),
        (
            {"columns": [*columns(), CsvColumn("batch_note", CsvText())]},
            "names starting 'batch_' are reserved",
        ),
        ({"columns": [*columns(), CsvColumn("qty", CsvInt())]}, "column 'qty' is declared twice"),
        ({"columns": [*columns(), CsvColumn("Qty", CsvInt())]}, "must be non-empty lowercase"),
        ({"columns": [*columns(), CsvColumn("unit price", CsvInt())]}, "give db_name="),
        ({"table": "Acme Orders"}, "table 'Acme Orders' is not a lowercase SQL name"),
        ({"table": "sales"}, "table 'sales' is one of batchapp's own tables"),
        ({"table": "batch_orders"}, "table 'batch_orders' is one of batchapp's own tables"),
        ({"derived": [Derived("qty", CsvInt(), len)]}, "table column 'qty' is declared twice"),
        ({"derived": [Derived("x", "int", len)]}, "derived column 'x' has unknown type"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_declaration_is_a_one_line_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DeclarationError) as raised:
        declare(**changes)

    assert str(raised.value).startswith(f"csv_import {NAME!r}: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_header_name_that_is_no_sql_name_can_fill_a_named_column() -> None:
    made = declare(columns=[*columns(), CsvColumn("unit price", CsvInt(), db_name="unit_price")])

    assert made.spec.header[-1] == "unit price"
    assert "unit_price" in made.spec.table.columns


def test_the_declared_table_has_the_columns_and_the_bookkeeping() -> None:
    table = declare().spec.table

    assert [c.name for c in table.columns] == [
        *("id", "qty", "price", "placed_at", "due", "gift", "total_cents", "placed_on"),
        *("batch_job_id", "batch_line"),
    ]
    assert [c.name for c in table.primary_key] == ["id"]
    assert (table.c.due.nullable, table.c.qty.nullable) == (True, False)


def test_a_declared_import_registers_with_its_module_as_origin() -> None:
    name = f"test.registered_{uuid.uuid4().hex[:6]}"
    made = csv_import(name, table="test_registered", columns=columns())
    try:
        assert JOBS[name] is made
        assert JOBS.origin(name) == f"module {__name__}"
        with pytest.raises(JobRegistryError, match="clashes with the job of that name"):
            csv_import(name, table="test_registered", columns=columns())
    finally:
        del JOBS[name]


def test_a_bad_declaration_in_a_jobs_module_stops_discovery_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "two_keys_jobs.py").write_text(
        "from batchapp import CsvColumn, CsvInt, csv_import\n"
        "csv_import('acme.bad', table='acme_bad', columns=[\n"
        "    CsvColumn('a', CsvInt(), key=True), CsvColumn('b', CsvInt(), key=True)])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(DiscoveryError) as raised:
        discover(["two_keys_jobs"], registry=JobRegistry(), use_entry_points=False)

    sys.modules.pop("two_keys_jobs", None)
    assert str(raised.value) == (
        "module two_keys_jobs: cannot import it: DeclarationError: csv_import 'acme.bad': "
        "declare exactly one key column (key=True), got 'a', 'b'"
    )


@pytest.fixture(scope="module")
def ctx() -> JobContext:
    """A ledger on SQLite in New York time; chunks are run in this process."""
    url = f"sqlite:///{RUN_DATA_DIR / 'table-import.sqlite'}"
    engine = engine_for(url)
    ensure_schema(engine)
    tuned = replace(app_settings, database_url=url, timezone="America/New_York")
    return JobContext(settings=tuned, engine=engine)


@pytest.fixture(scope="module")
def orders() -> Iterator[TableImport]:
    made = JOBS.register(declare())
    assert isinstance(made, TableImport)
    yield made
    del JOBS[NAME]


def run(ctx: JobContext, name: str, lines: Sequence[str], order: Sequence[int]) -> ledger.JobView:
    """Import ``lines`` in chunks of 2, run here in ``order`` (then any left)."""
    (RUN_DATA_DIR / name).write_text(HEADER + "".join(f"{line}\n" for line in lines))
    view = ledger.submit(ctx, NAME, {"path": name, "chunk_rows": 2}, lambda *_: None)
    for index in [*order, *(i for i in range(view.chunks_total) if i not in order)]:
        ledger.run_chunk(ctx, view.id, index)
    return ledger.get(ctx, view.id)


def stored(ctx: JobContext, table: Any, job_id: str) -> tuple[dict[str, Any], dict[int, str]]:
    with ctx.engine.connect() as connection:
        rows = connection.execute(select(table).where(table.c.batch_job_id == job_id)).mappings()
        held = {row["id"]: dict(row) for row in rows}
        rejects = connection.execute(
            select(import_rejects.c.line, import_rejects.c.reason).where(
                import_rejects.c.job_id == job_id
            )
        )
        return held, {line: reason for line, reason in rejects}


def test_a_declared_import_stores_rows_and_rejects_each_bad_line(
    ctx: JobContext, orders: TableImport
) -> None:
    tag = uuid.uuid4().hex[:6]
    lines = [
        f"{tag}-1,2,19.90,2026-11-25T09:00:00,2026-12-01,yes",
        f"{tag}-2,0,1.00,2026-11-25T09:00:00,,",
        f"{tag}-3,1,1.005,2026-11-25T09:00:00,,",
        f"{tag}-4,1,1.00,2026-03-08T02:30:00,,",
        f"{tag}-5,1,1.00,2026-11-25T23:30:00-05:00,,maybe",
        f"{tag}-6,3,0.5,2026-11-26T03:00:00Z,,off",
    ]
    view = run(ctx, f"{tag}.csv", lines, order=[2, 1, 0])
    held, rejected = stored(ctx, orders.spec.table, view.id)

    assert view.result == {"rows": 6, "imported": 2, "rejected": 4, "new": 2, "duplicates": 0}
    assert rejected == {
        3: "qty: must be between 1 and 100, got 0",
        4: "price: expected a decimal with at most 2 places, got '1.005'",
        5: "placed_at: '2026-03-08T02:30:00' does not exist in America/New_York (clocks skip it)",
        6: "gift: expected true/false, yes/no, on/off or 1/0, got 'maybe'",
    }
    first, last = held[f"{tag}-1"], held[f"{tag}-6"]
    assert (first["price"], first["total_cents"], first["batch_line"]) == (1990, 3980, 2)
    assert (first["due"], first["gift"], last["due"], last["gift"]) == (
        date(2026, 12, 1),
        True,
        None,
        False,
    )
    assert first["placed_at"] == datetime(2026, 11, 25, 14, 0)
    # 03:00 UTC is still the 25th in New York: the derived day is the local one.
    assert (last["placed_on"], last["total_cents"]) == (date(2026, 11, 25), 150)


def test_a_repeated_key_is_rejected_naming_the_first_line_whatever_the_order(
    ctx: JobContext, orders: TableImport
) -> None:
    tag = uuid.uuid4().hex[:6]
    row = "{0},1,1.00,2026-11-25T09:00:00,,{1}"
    lines = [
        row.format(f"{tag}-A", "yes"),
        row.format(f"{tag}-B", "yes"),
        row.format(f"{tag}-B", "no"),
        row.format(f"{tag}-A", "no"),
        row.format(f"{tag}-C", "yes"),
    ]
    view = run(ctx, f"{tag}.csv", lines, order=[2, 1, 0])
    held, rejected = stored(ctx, orders.spec.table, view.id)

    assert view.result == {"rows": 5, "imported": 3, "rejected": 2, "new": 3, "duplicates": 0}
    assert {key: (row["batch_line"], row["gift"]) for key, row in held.items()} == {
        f"{tag}-A": (2, True),
        f"{tag}-B": (3, True),
        f"{tag}-C": (6, True),
    }
    assert rejected == {
        4: f"id '{tag}-B' repeats line 3 (a file may hold an id once)",
        5: f"id '{tag}-A' repeats line 2 (a file may hold an id once)",
    }


def test_a_re_import_adds_nothing(ctx: JobContext, orders: TableImport) -> None:
    tag = uuid.uuid4().hex[:6]
    lines = [f"{tag}-{i},1,1.00,2026-11-25T09:00:00,," for i in range(5)]

    first = run(ctx, f"{tag}.csv", lines, order=[])
    again = run(ctx, f"{tag}.csv", lines, order=[2, 0])

    assert first.result == {"rows": 5, "imported": 5, "rejected": 0, "new": 5, "duplicates": 0}
    assert again.result == {"rows": 5, "imported": 5, "rejected": 0, "new": 0, "duplicates": 5}
    assert stored(ctx, orders.spec.table, again.id)[0] == {}


def test_the_table_is_created_on_submit(ctx: JobContext, orders: TableImport) -> None:
    (RUN_DATA_DIR / "empty-orders.csv").write_text(HEADER)
    ledger.submit(ctx, NAME, {"path": "empty-orders.csv"}, lambda *_: None)

    assert TABLE in inspect(ctx.engine).get_table_names()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("id,qty,price,placed_at,due\n", "missing column(s) gift"),
        ("id,qty,price,placed_at,due,gift,note\n", "unknown column(s) 'note'"),
        ("id,id,qty,price,placed_at,due,gift\n", "repeated column(s) 'id'"),
    ],
)
def test_a_bad_header_is_refused_at_submit(
    ctx: JobContext, orders: TableImport, header: str, message: str
) -> None:
    (RUN_DATA_DIR / "bad-header.csv").write_text(header)

    with pytest.raises(ParamError) as raised:
        ledger.submit(ctx, NAME, {"path": "bad-header.csv"}, lambda *_: None)

    assert str(raised.value).startswith(f"{NAME}: bad-header.csv: bad header: ")
    assert message in str(raised.value)


def test_a_derived_column_that_fails_rejects_the_line_with_its_reason() -> None:
    made = declare(
        derived=[
            Derived("ratio", CsvInt(), lambda row: row["qty"] // 0),
            Derived("note", CsvText(max_len=3), lambda row: "long", optional=True),
        ]
    )
    both = declare(derived=[Derived("note", CsvText(max_len=3), lambda row: "long")])
    parse = LineParser(made.spec, made.spec.header, ZoneInfo("UTC"), str, str)
    parse_note = LineParser(both.spec, both.spec.header, ZoneInfo("UTC"), str, str)
    line = "A,1,1.00,2026-11-25T09:00:00,,"

    assert (
        parse(line)
        == "ratio: cannot be derived (ZeroDivisionError: integer division or modulo by zero)"
    )
    assert parse_note(line) == "note: expected 1-3 characters, got 4"


def test_a_derived_column_sees_the_row_by_name_and_may_derive_nothing_if_optional() -> None:
    seen: list[dict[str, Any]] = []

    def due_or_none(row: dict[str, Any]) -> date | None:
        seen.append(dict(row))
        return row["due"]

    made = declare(
        derived=[
            Derived("later", CsvDate(), due_or_none, optional=True),
            Derived("again", CsvDate(), lambda row: row["later"], optional=True),
        ]
    )
    must = declare(derived=[Derived("later", CsvDate(), lambda row: row["due"])])
    parse = LineParser(made.spec, ("gift", *made.spec.header[:-1]), ZoneInfo("UTC"), str, str)
    parse_must = LineParser(must.spec, must.spec.header, ZoneInfo("UTC"), str, str)

    row = parse("no,A,1,1.00,2026-11-25T09:00:00,")

    assert isinstance(row, tuple)
    assert row[made.spec.stored_names.index("later")] is None
    assert row[made.spec.stored_names.index("gift")] is False
    assert seen == [
        {
            "id": "A",
            "qty": 1,
            "price": 100,
            "placed_at": seen[0]["placed_at"],
            "due": None,
            "gift": False,
        }
    ]
    assert parse_must("A,1,1.00,2026-11-25T09:00:00,,") == "later: derived no value"


def test_a_derived_column_may_not_share_a_file_columns_name() -> None:
    with pytest.raises(DeclarationError, match="derived column 'qty' is also a file column"):
        declare(
            columns=[*columns()[:1], CsvColumn("qty", CsvInt(), db_name="n")],
            derived=[Derived("qty", CsvInt(), len)],
        )


def test_an_existing_table_without_a_declared_column_is_refused_at_submit(ctx: JobContext) -> None:
    name = f"test.narrow_{uuid.uuid4().hex[:6]}"
    table = f"test_narrow_{uuid.uuid4().hex[:6]}"
    with ctx.engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE {table} (id VARCHAR(16) PRIMARY KEY)")
    (RUN_DATA_DIR / "narrow.csv").write_text("id\nA\n")
    csv_import(name, table=table, columns=[CsvColumn("id", CsvText(), key=True)])
    try:
        with pytest.raises(ParamError) as raised:
            ledger.submit(ctx, name, {"path": "narrow.csv"}, lambda *_: None)
    finally:
        del JOBS[name]

    assert str(raised.value) == (
        f"{name}: table {table} exists without column(s) batch_job_id, batch_line; "
        "add them or import into another table"
    )


def test_an_int_key_repeated_across_chunks_keeps_its_first_line(ctx: JobContext) -> None:
    name = f"test.counts_{uuid.uuid4().hex[:6]}"
    made = csv_import(
        name,
        table=f"test_counts_{uuid.uuid4().hex[:6]}",
        columns=[CsvColumn("n", CsvInt(), key=True), CsvColumn("day", CsvDate())],
    )
    (RUN_DATA_DIR / "counts.csv").write_text("day,n\n2026-01-01,7\n2026-01-02,8\n2026-01-03,7\n")
    done = run_once(ctx, made, "counts.csv", order=(2, 1, 0))
    with ctx.engine.connect() as connection:
        rows = connection.execute(select(made.spec.table.c.n, made.spec.table.c.day)).all()
        rejects = connection.execute(
            select(import_rejects.c.line, import_rejects.c.reason, import_rejects.c.raw).where(
                import_rejects.c.job_id == done.id
            )
        ).all()

    assert done.result == {"rows": 3, "imported": 2, "rejected": 1, "new": 2, "duplicates": 0}
    assert sorted(rows) == [(7, date(2026, 1, 1)), (8, date(2026, 1, 2))]
    assert rejects == [(4, "n 7 repeats line 2 (a file may hold a n once)", "7,2026-01-03")]


GOOD_FIELDS = (
    ("A-1", "B"),
    ("1", "100"),
    ("0", "19.9", "1000.00"),
    ("2026-11-25T09:00:00+09:00", "2026-11-25 09:00:00"),
    ("", "2026-11-25"),
    ("", "yes", "0"),
)


@st.composite
def order_line(draw: st.DrawFn) -> str:
    """An orders line whose fields are each hostile one time in four."""
    fields = [
        draw(field if draw(st.integers(0, 3)) == 0 else st.sampled_from(good))
        for good in GOOD_FIELDS
    ]
    return ",".join(fields[: draw(st.sampled_from((5, 6, 6, 6)))])


@settings(max_examples=300, deadline=None)
@given(
    line=order_line(), tz=st.sampled_from((ZoneInfo("Asia/Seoul"), ZoneInfo("America/New_York")))
)
def test_any_line_of_a_declared_import_is_a_row_or_a_short_reason(line: str, tz: ZoneInfo) -> None:
    spec = declare().spec
    result = LineParser(spec, spec.header, tz, lambda v: v, lambda v: v)(line)

    if isinstance(result, str):
        assert 0 < len(result) < 300 and "\0" not in result
        return
    row = dict(zip(spec.stored_names, result, strict=True))
    assert 1 <= len(row["id"]) <= 16 and 1 <= row["qty"] <= 100 and 0 <= row["price"] <= 100_000
    assert row["placed_at"].tzinfo is None and isinstance(row["placed_on"], date)
    assert row["total_cents"] == row["qty"] * row["price"]
    assert row["due"] is None or isinstance(row["due"], date)
    assert row["gift"] in (None, True, False)


def test_sql_keywords_as_table_and_column_names_are_quoted(ctx: JobContext) -> None:
    name = f"test.keywords_{uuid.uuid4().hex[:6]}"
    made = csv_import(
        name,
        table="order",
        columns=[CsvColumn("select", CsvText(), key=True), CsvColumn("from", CsvInt())],
    )
    (RUN_DATA_DIR / "keywords.csv").write_text("select,from\nA,1\nB,2\nA,3\n")
    done = run_once(ctx, made, "keywords.csv", order=(2, 0, 1))
    with ctx.engine.connect() as connection:
        rows = connection.execute(select(made.spec.table.c["select"], made.spec.table.c["from"]))

        assert sorted(rows.all()) == [("A", 1), ("B", 2)]
    assert done.result == {"rows": 3, "imported": 2, "rejected": 1, "new": 2, "duplicates": 0}


def run_once(ctx: JobContext, job: TableImport, path: str, order: Sequence[int]) -> ledger.JobView:
    """Import ``path`` with one-line chunks run here in ``order``, then unregister ``job``."""
    try:
        view = ledger.submit(ctx, job.name, {"path": path, "chunk_rows": 1}, lambda *_: None)
        for index in order:
            ledger.run_chunk(ctx, view.id, index)
        return ledger.get(ctx, view.id)
    finally:
        del JOBS[job.name]
