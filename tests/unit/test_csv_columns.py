"""Declared CSV column types: each reads good text into a value and names what is wrong."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from batchapp import (
    CsvBool,
    CsvDate,
    CsvDecimal,
    CsvInt,
    CsvText,
    CsvTimestamp,
    CsvType,
    DeclarationError,
)
from batchapp.jobs.columns import INT64, BadValue

SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")


def read(kind: CsvType, text: str, tz: ZoneInfo = SEOUL) -> Any:
    return kind.read(text, tz)


def reason(kind: CsvType, text: str, tz: ZoneInfo = SEOUL) -> str:
    with pytest.raises(BadValue) as raised:
        kind.read(text, tz)
    return str(raised.value)


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("10", 10), ("007", 7)])
def test_int_reads_digits_within_its_bounds(text: str, value: int) -> None:
    assert read(CsvInt(min=1, max=10), text) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", "must be between 1 and 10, got 0"),
        ("11", "must be between 1 and 10, got 11"),
        ("-3", "not a whole number: '-3'"),
        ("+3", "not a whole number: '+3'"),
        ("1.0", "not a whole number: '1.0'"),
        ("1_000", "not a whole number: '1_000'"),
        ("\u0661", "not a whole number: '\u0661'"),
        ("", "not a whole number: ''"),
        ("9" * 5_000, "must be between 1 and 10, got '99999"),
    ],
)
def test_int_rejects_with_the_reason(text: str, expected: str) -> None:
    assert reason(CsvInt(min=1, max=10), text).startswith(expected)


def test_int_takes_a_sign_only_where_negatives_are_allowed() -> None:
    assert read(CsvInt(min=-5, max=5), "-5") == -5
    assert reason(CsvInt(min=-5, max=5), "-6") == "must be between -5 and 5, got -6"
    assert read(CsvInt(), str(INT64)) == INT64


@pytest.mark.parametrize(
    ("text", "minor"), [("19.9", 1990), ("19.90", 1990), ("0", 0), ("0.01", 1), ("100", 10000)]
)
def test_decimal_is_exact_minor_units(text: str, minor: int) -> None:
    assert read(CsvDecimal(places=2, max="100.00"), text) == minor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.345", "expected a decimal with at most 2 places, got '12.345'"),
        ("1.", "expected a decimal with at most 2 places, got '1.'"),
        (".5", "expected a decimal with at most 2 places, got '.5'"),
        ("-1", "expected a decimal with at most 2 places, got '-1'"),
        ("1e3", "expected a decimal with at most 2 places, got '1e3'"),
        ("nan", "expected a decimal with at most 2 places, got 'nan'"),
        ("100.01", "must be between 0.00 and 100.00, got 100.01"),
    ],
)
def test_decimal_rejects_with_the_reason(text: str, expected: str) -> None:
    assert reason(CsvDecimal(places=2, max="100.00"), text) == expected


def test_decimal_with_negative_bounds_and_no_places() -> None:
    signed = CsvDecimal(places=3, min="-1.5", max="1.5")
    whole = CsvDecimal(places=0, max=10)

    assert read(signed, "-1.5") == -1500
    assert read(signed, "-0.001") == -1
    assert reason(signed, "-1.501") == "must be between -1.500 and 1.500, got -1.501"
    assert read(whole, "10") == 10
    assert reason(whole, "1.0") == "expected a decimal with at most 0 places, got '1.0'"
    assert signed.show(-1) == "-0.001"


def test_text_bounds_and_pattern() -> None:
    short = CsvText(min_len=2, max_len=4)
    code = CsvText(max_len=8, pattern=r"[A-Z]+-[0-9]+")
    described = CsvText(max_len=8, pattern=r"[a-z]+", pattern_help="lowercase letters")

    assert read(short, "ab") == "ab"
    assert read(short, "abcd") == "abcd"
    assert reason(short, "a") == "expected 2-4 characters, got 1"
    assert reason(short, "abcde") == "expected 2-4 characters, got 5"
    assert read(code, "AB-12") == "AB-12"
    assert reason(code, "ab-12") == "does not match the pattern '[A-Z]+-[0-9]+': 'ab-12'"
    assert reason(described, "ABC") == "expected 1-8 lowercase letters, got 'ABC'"


def test_date_is_year_month_day_only() -> None:
    assert read(CsvDate(), "2026-11-25") == date(2026, 11, 25)
    for text in ("2026-02-30", "20261125", "2026-W48-3", "25/11/2026", ""):
        assert reason(CsvDate(), text) == f"expected a date YYYY-MM-DD, got {text!r}"


def test_timestamp_with_an_offset_is_that_moment() -> None:
    value = read(CsvTimestamp(), "2026-11-25T00:30:00+09:00")

    assert CsvTimestamp().stored(value) == datetime(2026, 11, 24, 15, 30)
    assert read(CsvTimestamp(), "2026-11-24T15:30:00Z").tzinfo == SEOUL


def test_timestamp_without_offset_is_read_in_the_configured_zone_and_must_exist() -> None:
    kind = CsvTimestamp()

    assert kind.stored(read(kind, "2026-03-08T01:59:59", NEW_YORK)) == datetime(
        2026, 3, 8, 6, 59, 59
    )
    assert kind.stored(read(kind, "2026-03-08 03:00:00", NEW_YORK)) == datetime(2026, 3, 8, 7, 0)
    assert reason(kind, "2026-03-08T02:30:00", NEW_YORK) == (
        "'2026-03-08T02:30:00' does not exist in America/New_York (clocks skip it)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yesterday", "not an ISO 8601 date and time: 'yesterday'"),
        ("2026-02-30T10:00:00", "not an ISO 8601 date and time"),
        ("0001-01-01T00:00:00", "out of range (year 1 to 9999 in UTC and Asia/Seoul)"),
        ("9999-12-31T23:00:00+00:00", "out of range (year 1 to 9999 in UTC and Asia/Seoul)"),
        # Before year 1 in UTC, though not in Asia/Seoul.
        ("0001-01-01T00:00:00+05:00", "out of range (year 1 to 9999 in UTC and Asia/Seoul)"),
    ],
)
def test_timestamp_rejects_with_the_reason(text: str, expected: str) -> None:
    assert reason(CsvTimestamp(), text).startswith(expected)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *(("true", True), ("YES", True), ("on", True), ("1", True)),
        *(("False", False), ("no", False), ("off", False), ("0", False)),
    ],
)
def test_bool_spellings(text: str, value: bool) -> None:
    assert read(CsvBool(), text) is value


def test_bool_rejects_other_words() -> None:
    assert reason(CsvBool(), "t") == "expected true/false, yes/no, on/off or 1/0, got 't'"


def test_derived_values_are_checked_like_read_ones() -> None:
    assert CsvInt(max=5).check_derived(5) == 5
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    assert CsvTimestamp().check_derived(aware) is aware
    with pytest.raises(BadValue, match="must be between"):
        CsvInt(max=5).check_derived(6)
    with pytest.raises(BadValue, match="not a whole number"):
        CsvInt().check_derived(True)
    with pytest.raises(BadValue, match="expected a date"):
        CsvDate().check_derived(datetime(2026, 1, 1))
    with pytest.raises(BadValue, match="with a time zone"):
        CsvTimestamp().check_derived(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CsvInt(min=5, max=1), "CsvInt: need"),
        (lambda: CsvInt(max=2**64), "CsvInt: need"),
        (lambda: CsvDecimal(places=10), "places must be 0 to 9"),
        (lambda: CsvDecimal(places=2, max="1.234"), "max must be a decimal with at most 2"),
        (lambda: CsvDecimal(places=2, min=1.5), "min must be a decimal"),
        (lambda: CsvText(min_len=5, max_len=2), "CsvText: need 0 <= min_len"),
        (lambda: CsvText(pattern="("), "CsvText: bad pattern '('"),
    ],
)
def test_bad_type_declarations_are_one_line_errors(make: Any, message: str) -> None:
    with pytest.raises(DeclarationError, match=message.replace("(", r"\(")) as raised:
        make()
    assert "\n" not in str(raised.value)
