"""The sales CSV format: headers and rows, each rejection with a reason."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchapp.jobs.sales_csv import COLUMNS, HeaderError, RowParser, read_header, write_sample
from tests.hostile import sales_line

SEOUL = ZoneInfo("Asia/Seoul")
parse = RowParser(columns=COLUMNS, tz=SEOUL, to_db_time=lambda v: v, to_db_date=lambda v: v)


def test_a_good_row_becomes_utc_time_local_day_and_cents() -> None:
    row = parse("S-1,2026-11-25T00:30:00+09:00,SEOUL-01,SKU-0001,3,19.9")

    assert row == (
        "S-1",
        datetime(2026, 11, 24, 15, 30),
        date(2026, 11, 25),
        "SEOUL-01",
        "SKU-0001",
        3,
        1990,
        5970,
    )


def test_a_time_without_offset_is_read_in_the_configured_timezone() -> None:
    row = parse("S-1,2026-11-25 09:00:00,SEOUL-01,SKU-0001,1,1")

    assert not isinstance(row, str)
    assert row[1] == datetime(2026, 11, 25, 0, 0, tzinfo=UTC).replace(tzinfo=None)


def test_quoted_fields_are_read_as_csv() -> None:
    row = parse('"S-1","2026-11-25T09:00:00Z","SEOUL, 01",SKU-1,1,"2.50"')

    assert not isinstance(row, str)
    assert row[3] == "SEOUL, 01"
    assert row[6] == 250


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "empty line"),
        ("S-1,2026-11-25T09:00:00+09:00,ST,SKU,1", "expected 6 fields, got 5"),
        ("S-1,2026-11-25T09:00:00+09:00,ST,SKU,1,2,3", "expected 6 fields, got 7"),
        (",2026-11-25T09:00:00+09:00,ST,SKU,1,2", "order_id: expected 1-64"),
        ("S 1,2026-11-25T09:00:00+09:00,ST,SKU,1,2", "order_id: expected 1-64"),
        ("S-1,2026-02-30T09:00:00,ST,SKU,1,2", "sold_at: not an ISO 8601"),
        ("S-1,yesterday,ST,SKU,1,2", "sold_at: not an ISO 8601"),
        ("S-1,2026-11-25T09:00:00,,SKU,1,2", "store: expected 1-32 characters, got 0"),
        ("S-1,2026-11-25T09:00:00,ST," + "K" * 33 + ",1,2", "sku: expected 1-32"),
        ("S-1,2026-11-25T09:00:00,ST,SKU,-3,2", "quantity: not a whole number: '-3'"),
        ("S-1,2026-11-25T09:00:00,ST,SKU,1_000,2", "quantity: not a whole number"),
        ("S-1,2026-11-25T09:00:00,ST,SKU,0,2", "quantity: must be between 1 and 1,000,000"),
        ("S-1,2026-11-25T09:00:00,ST,SKU,1,12.345", "unit_price: expected a decimal"),
        ("S-1,2026-11-25T09:00:00,ST,SKU,1,-1", "unit_price: expected a decimal"),
        ("S-1,2026-11-25T09:00:00,ST,SKU,1,nan", "unit_price: expected a decimal"),
        ('S-1,"2026-11-25,ST,SKU,1,2', "malformed quoting"),
    ],
)
def test_bad_rows_are_rejected_with_the_reason(line: str, reason: str) -> None:
    result = parse(line)

    assert isinstance(result, str)
    assert reason in result


def test_header_may_order_columns_freely() -> None:
    names = read_header(b"sku,order_id,store,sold_at,unit_price,quantity\r\n")

    assert sorted(names) == sorted(COLUMNS)


def test_header_with_bom_is_accepted() -> None:
    assert read_header(("\ufeff" + ",".join(COLUMNS) + "\n").encode()) == COLUMNS


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"order_id,sold_at,store,sku,quantity\n", "missing column(s) unit_price"),
        (b"order_id,sold_at,store,sku,quantity,unit_price,note\n", "unknown column(s) 'note'"),
        (b"\n", "the first line must be a header"),
        (b"\xff\xfe\n", "not valid UTF-8"),
    ],
)
def test_bad_headers_say_what_is_wrong(header: bytes, message: str) -> None:
    with pytest.raises(HeaderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_header(header)


def test_sample_writer_mixes_in_the_requested_share_of_bad_rows(tmp_path: Path) -> None:
    stats = write_sample(tmp_path / "s.csv", 2_000, bad_fraction=0.1, seed=7)
    lines = (tmp_path / "s.csv").read_text().splitlines()
    rejected = [line for line in lines[1:] if isinstance(parse(line), str)]

    assert len(lines) == 2_001
    assert len(rejected) == stats.bad
    assert 150 < stats.bad < 250


NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("S-1,0001-01-01T00:00:00+09:00,ST,SKU,1,2", "sold_at: out of range"),
        ("S-1,9999-12-31T23:59:59-09:00,ST,SKU,1,2", "sold_at: out of range"),
        ("S-1,9999-12-31T23:00:00+00:00,ST,SKU,1,2", "sold_at: out of range"),
        ("S-1,0001-01-01T00:00:00,ST,SKU,1,2", "sold_at: out of range"),
        ("S-1,2026-11-25T09:00:00,ST,S\0KU,1,2", "NUL character at column 29"),
        ("S-1,2026-11-25T09:00:00\0,ST,SKU,1,2", "NUL character at column 24"),
        ("S-1,2026-11-25T09:00:00,ST,SKU," + "9" * 5_000 + ",2", "quantity: must be between"),
        ("S-1,2026-11-25T09:00:00,ST,SKU,1,\u0661\u0662", "unit_price: expected a decimal"),
        ("S-1,2026-11-25T09:00:00,ST,SKU,1,1.\u0665", "unit_price: expected a decimal"),
        ("S-1,1987-05-10T02:30:00,ST,SKU,1,2", "does not exist in Asia/Seoul"),
    ],
)
def test_values_at_the_edges_are_rejected_not_raised(line: str, reason: str) -> None:
    result = parse(line)

    assert isinstance(result, str)
    assert reason in result
    assert len(result) < 300


def test_a_local_time_in_a_daylight_saving_gap_is_rejected() -> None:
    new_york = RowParser(COLUMNS, NEW_YORK, to_db_time=lambda v: v, to_db_date=lambda v: v)

    gap = new_york("S-1,2026-03-08T02:30:00,ST,SKU,1,2")
    before = new_york("S-1,2026-03-08T01:59:59,ST,SKU,1,2")
    after = new_york("S-1,2026-03-08T03:00:00,ST,SKU,1,2")
    with_offset = new_york("S-1,2026-03-08T02:30:00-05:00,ST,SKU,1,2")

    assert (
        gap == "sold_at: '2026-03-08T02:30:00' does not exist in America/New_York (clocks skip it)"
    )
    assert not isinstance(before, str) and before[1] == datetime(2026, 3, 8, 6, 59, 59)
    assert not isinstance(after, str) and after[1] == datetime(2026, 3, 8, 7, 0)
    assert not isinstance(with_offset, str) and with_offset[1] == datetime(2026, 3, 8, 7, 30)


def test_a_huge_bad_header_is_echoed_in_short() -> None:
    header = ",".join([*COLUMNS, *(f"extra{i}" * 50 for i in range(5_000))]) + "\n"

    with pytest.raises(HeaderError) as raised:
        read_header(header.encode())

    message = str(raised.value)
    assert len(header) > 250_000
    assert len(message) < 600
    assert "unknown column(s) 'extra0extra0" in message
    assert "and 4,995 more" in message


@settings(max_examples=400, deadline=None)
@given(
    line=sales_line().map(lambda raw: raw.decode("utf-8", errors="replace")) | st.text(),
    tz=st.sampled_from((SEOUL, NEW_YORK, ZoneInfo("Pacific/Kiritimati"))),
)
def test_any_line_is_a_storable_row_or_a_short_reason(line: str, tz: ZoneInfo) -> None:
    result = RowParser(COLUMNS, tz, to_db_time=lambda v: v, to_db_date=lambda v: v)(line)

    if isinstance(result, str):
        assert 0 < len(result) < 300 and "\0" not in result
        return
    order_id, sold_at, sold_on, store, sku, quantity, unit_cents, amount_cents = result
    assert order_id.isascii() and 1 <= len(order_id) <= 64
    assert sold_at.tzinfo is None and isinstance(sold_on, date)
    assert all(1 <= len(text) <= 32 and "\0" not in text for text in (store, sku))
    assert 1 <= quantity <= 1_000_000
    assert 0 <= unit_cents <= 99_999_999_999 and amount_cents == unit_cents * quantity
