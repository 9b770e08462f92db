"""Bad files imported chunk by chunk in this process: each line imported once or rejected.

tests/integration/test_bad_input.py runs the tests that take a ``chunk_ctx`` again on PostgreSQL,
and sends bad messages, task arguments and files to a real worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from batchapp import ledger
from batchapp.celery import settings as app_settings
from batchapp.jobs import JobContext
from batchapp.jobs.sales_csv import COLUMNS, RowParser
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema, sales, sales_rejects
from tests.hostile import sales_line
from tests.unit.conftest import RUN_DATA_DIR

HEADER = ",".join(COLUMNS) + "\n"


# tests/integration/test_bad_input.py: the same on PostgreSQL.
@pytest.fixture(scope="module", params=["sqlite"])
def chunk_ctx() -> JobContext:
    """A ledger on SQLite, in New York time (it has daylight-saving gaps); its chunks are run in
    this process, in whatever order a test picks."""
    url = f"sqlite:///{RUN_DATA_DIR / 'bad-input-chunks.sqlite'}"
    engine = engine_for(url)
    ensure_schema(engine)
    tuned = replace(app_settings, database_url=url, timezone="America/New_York")
    return JobContext(settings=tuned, engine=engine)


def run_in_order(
    ctx: JobContext, name: str, content: bytes, order: Sequence[int]
) -> ledger.JobView:
    """Import ``content`` with chunks of 2 lines, run here in ``order`` (then any left)."""
    (RUN_DATA_DIR / name).write_bytes(content)
    view = ledger.submit(ctx, "import_csv", {"path": name, "chunk_rows": 2}, lambda *_: None)
    indexes = [i for i in order if i < view.chunks_total]
    for index in [*indexes, *(i for i in range(view.chunks_total) if i not in indexes)]:
        ledger.run_chunk(ctx, view.id, index)
    return ledger.get(ctx, view.id)


def stored(ctx: JobContext, job_id: str) -> tuple[dict[str, tuple[int, str]], dict[int, str]]:
    """This job's sales rows (order_id -> line, store) and rejects (line -> reason)."""
    with ctx.engine.connect() as connection:
        rows = connection.execute(
            select(sales.c.order_id, sales.c.line, sales.c.store).where(sales.c.job_id == job_id)
        )
        held = {order_id: (line, store) for order_id, line, store in rows}
        rejected = connection.execute(
            select(sales_rejects.c.line, sales_rejects.c.reason).where(
                sales_rejects.c.job_id == job_id
            )
        )
        return held, {line: reason for line, reason in rejected}


def repeated_ids_file(tag: str) -> bytes:
    """{tag}-A on lines 2, 5 and 7 with three contents; {tag}-B twice on line 3's chunk."""
    row = "{0},2026-11-25T09:00:00+09:00,{1},SKU-1,1,1.00\n"
    lines = [
        row.format(f"{tag}-A", "FIRST"),
        row.format(f"{tag}-B", "B1"),
        row.format(f"{tag}-B", "B2"),
        row.format(f"{tag}-A", "SECOND"),
        row.format(f"{tag}-C", "C"),
        row.format(f"{tag}-A", "FIRST"),
    ]
    return (HEADER + "".join(lines)).encode()


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)])
def test_an_order_id_repeated_in_a_file_keeps_its_first_line_whatever_the_chunk_order(
    chunk_ctx: JobContext, order: tuple[int, ...]
) -> None:
    tag = f"R{uuid.uuid4().hex[:8]}"
    view = run_in_order(chunk_ctx, f"{tag}.csv", repeated_ids_file(tag), order)
    held, rejected = stored(chunk_ctx, view.id)

    assert view.status == "succeeded"
    assert view.result == {"rows": 6, "imported": 3, "rejected": 3, "new": 3, "duplicates": 0}
    assert (view.items_done, view.items_failed) == (3, 3)
    assert held == {f"{tag}-A": (2, "FIRST"), f"{tag}-B": (3, "B1"), f"{tag}-C": (6, "C")}
    assert rejected == {
        4: f"order_id '{tag}-B' repeats line 3 (a file may hold an order_id once)",
        5: f"order_id '{tag}-A' repeats line 2 (a file may hold an order_id once)",
        7: f"order_id '{tag}-A' repeats line 2 (a file may hold an order_id once)",
    }


def test_ids_imported_by_an_earlier_job_stay_duplicates(chunk_ctx: JobContext) -> None:
    tag = f"D{uuid.uuid4().hex[:8]}"
    first = run_in_order(chunk_ctx, f"{tag}-1.csv", repeated_ids_file(tag), (0, 1, 2))
    again = run_in_order(chunk_ctx, f"{tag}-2.csv", repeated_ids_file(tag), (2, 1, 0))

    assert first.result["new"] == 3
    assert again.result == {"rows": 6, "imported": 6, "rejected": 0, "new": 0, "duplicates": 6}


def expected_import(content: bytes, ctx: JobContext) -> tuple[int, dict[str, int]]:
    """(data lines, order_id -> first valid line), read line by line as the job should."""
    parse = RowParser(COLUMNS, ctx.tz, to_db_time=lambda v: v, to_db_date=lambda v: v)
    body = content.split(b"\n", 1)[1]
    lines = body.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    first: dict[str, int] = {}
    for number, raw in enumerate(lines, start=2):
        try:
            row = parse(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            continue
        if not isinstance(row, str):
            first.setdefault(row[0], number)
    return len(lines), first


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lines=st.lists(sales_line(), max_size=9),
    last_newline=st.booleans(),
    order=st.permutations(range(5)),
)
def test_imported_plus_rejected_is_every_line_whatever_the_bytes(
    chunk_ctx: JobContext, lines: list[bytes], last_newline: bool, order: list[int]
) -> None:
    content = HEADER.encode() + b"\n".join(lines) + (b"\n" if last_newline else b"")
    with chunk_ctx.engine.begin() as connection:
        connection.execute(delete(sales))  # so every valid line's id is new to the table
    view = run_in_order(chunk_ctx, "hostile.csv", content, order)
    assert view.status == "succeeded", view.error

    held, rejected = stored(chunk_ctx, view.id)
    line_count, first_lines = expected_import(content, chunk_ctx)
    assert view.result["imported"] + view.result["rejected"] == view.result["rows"] == line_count
    assert view.items_done + view.items_failed == line_count
    assert view.result["imported"] == view.result["new"] == len(held) == len(first_lines)
    assert {order_id: line for order_id, (line, _) in held.items()} == first_lines
    assert len(rejected) == view.result["rejected"]
    with chunk_ctx.engine.connect() as connection:
        texts = connection.execute(
            select(sales_rejects.c.raw, sales_rejects.c.reason).where(
                sales_rejects.c.job_id == view.id
            )
        )
        assert not any("\0" in raw + reason for raw, reason in texts)
