"""The sales CSV format: one sale per line, checked field by field.

    order_id,sold_at,store,sku,quantity,unit_price
    S-000000001,2026-11-24T13:05:09+09:00,SEOUL-03,SKU-0042,2,19.90

- ``order_id``: 1-64 characters of letters, digits, ``-`` and ``_``; the unique key.
- ``sold_at``: ISO 8601; a time without an offset is read in the configured timezone, and
  must exist there (not in a daylight-saving gap).
- ``store``, ``sku``: 1-32 characters.
- ``quantity``: an integer from 1 to 1,000,000 (ASCII digits).
- ``unit_price``: a decimal with at most 2 places, from 0 to 999,999,999.99 (ASCII digits).

The header names the columns (any order, no extras). Fields may be quoted; a record may not
span lines, nor hold a NUL. A line that fails a check is rejected with its line number and the
reason; a check never raises, whatever the line holds.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from batchapp.validate import shown

COLUMNS = ("order_id", "sold_at", "store", "sku", "quantity", "unit_price")
MAX_LINE_BYTES = 64 * 1024
MAX_QUANTITY = 1_000_000
RAW_KEEP = 200
SHOWN_NAMES = 5
SQLITE_MAGIC = b"SQLite format 3\x00"

_ORDER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
# [0-9], not \d: \d also matches other scripts' digits ('١٢'), which quantity refuses too.
_PRICE = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,2}))?\Z")
_SAMPLE_FIRST_ROW = re.compile(rb"(S[0-9]*-[0-9]{9})?,")

Row = tuple[Any, ...]
"""order_id, sold_at (UTC), sold_on (local day), store, sku, quantity, unit and total cents."""


class HeaderError(ValueError):
    """The header line does not name exactly the sales columns."""


def read_header(first_line: bytes) -> tuple[str, ...]:
    """The column order the header gives; :class:`HeaderError` says what is missing or extra."""
    try:
        text = first_line.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise HeaderError("the header line is not valid UTF-8") from None
    if not text:
        raise HeaderError(f"the first line must be a header: {','.join(COLUMNS)}")
    try:
        names = tuple(name.strip().lower() for name in next(csv.reader([text], strict=True)))
    except csv.Error as exc:
        raise HeaderError(f"the header line is not CSV: {exc}") from None
    missing = [name for name in COLUMNS if name not in names]
    extra = [name for name in names if name not in COLUMNS]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unknown column(s) {_some(extra)}")
    if duplicated:
        problems.append(f"repeated column(s) {_some(duplicated)}")
    if problems:
        raise HeaderError(f"bad header: {'; '.join(problems)} (expected {','.join(COLUMNS)})")
    return names


def _some(names: list[str]) -> str:
    """The first few names, each cut short: a bad header can be a 64 KiB line of them."""
    listed = ", ".join(shown(name, 40) for name in names[:SHOWN_NAMES])
    more = len(names) - SHOWN_NAMES
    return f"{listed} and {more:,} more" if more > 0 else listed


@dataclass(frozen=True)
class RowParser:
    """Turns one line into a :data:`Row`, or a reason it is rejected."""

    columns: tuple[str, ...]
    tz: ZoneInfo
    to_db_time: Callable[[datetime], Any]
    to_db_date: Callable[[date], Any]

    def __call__(self, line: str) -> Row | str:
        if not line:
            return "empty line"
        if "\0" in line:
            # PostgreSQL text cannot hold NUL, and no field has a use for one.
            return f"NUL character at column {line.index(chr(0)) + 1}"
        if '"' in line:
            try:
                fields = next(csv.reader([line], strict=True))
            except csv.Error as exc:
                return f"malformed quoting: {exc}"
        else:
            fields = line.split(",")
        if len(fields) != len(COLUMNS):
            return f"expected {len(COLUMNS)} fields, got {len(fields)}"
        value = dict(zip(self.columns, fields, strict=True))

        order_id = value["order_id"].strip()
        if not _ORDER_ID.match(order_id):
            return f"order_id: expected 1-64 letters, digits, '-' or '_', got {shown(order_id)}"

        sold_at_text = value["sold_at"].strip()
        try:
            sold_at = datetime.fromisoformat(sold_at_text)
        except ValueError:
            return f"sold_at: not an ISO 8601 date and time: {shown(sold_at_text)}"
        try:
            if sold_at.tzinfo is None:
                utc = sold_at.replace(tzinfo=self.tz).astimezone(UTC)
                local = utc.astimezone(self.tz)
                if local.replace(tzinfo=None) != sold_at:
                    return f"sold_at: {sold_at_text!r} does not exist in {self.tz} (clocks skip it)"
            else:
                utc = sold_at.astimezone(UTC)
                local = sold_at.astimezone(self.tz)
        except OverflowError:
            # Year 1 or 9999 with an offset: the moment lies outside what datetime can hold.
            return f"sold_at: out of range (year 1 to 9999 in UTC and {self.tz}): {sold_at_text!r}"
        sold_on = local.date()
        sold_at_utc = utc.replace(tzinfo=None)

        store = value["store"].strip()
        if not 1 <= len(store) <= 32:
            return f"store: expected 1-32 characters, got {len(store)}"
        sku = value["sku"].strip()
        if not 1 <= len(sku) <= 32:
            return f"sku: expected 1-32 characters, got {len(sku)}"

        quantity_text = value["quantity"].strip()
        if not (quantity_text.isascii() and quantity_text.isdigit()):
            return f"quantity: not a whole number: {shown(quantity_text)}"
        if len(quantity_text) > 20:  # int() refuses 4,300+ digits with an exception
            return f"quantity: must be between 1 and {MAX_QUANTITY:,}, got {shown(quantity_text)}"
        quantity = int(quantity_text)
        if not 1 <= quantity <= MAX_QUANTITY:
            return f"quantity: must be between 1 and {MAX_QUANTITY:,}, got {quantity:,}"

        price_text = value["unit_price"].strip()
        price = _PRICE.match(price_text)
        if price is None:
            return f"unit_price: expected a decimal with at most 2 places, got {shown(price_text)}"
        whole, fraction = price.groups()
        unit_cents = int(whole) * 100 + int((fraction or "0").ljust(2, "0"))

        return (
            order_id,
            self.to_db_time(sold_at_utc),
            self.to_db_date(sold_on),
            store,
            sku,
            quantity,
            unit_cents,
            unit_cents * quantity,
        )


@dataclass(frozen=True)
class SampleStats:
    rows: int
    bad: int


_BAD_ROWS: tuple[Callable[[int], str], ...] = (
    lambda i: f"S-{i:09d},2026-02-30T10:00:00+09:00,SEOUL-01,SKU-0001,1,1.00",
    lambda i: f"S-{i:09d},2026-11-24T10:00:00+09:00,SEOUL-01,SKU-0001,-3,1.00",
    lambda i: f"S-{i:09d},2026-11-24T10:00:00+09:00,SEOUL-01,SKU-0001,1,12.345",
    lambda i: f"S-{i:09d},2026-11-24T10:00:00+09:00,SEOUL-01,SKU-0001",
    lambda i: f"S-{i:09d},2026-11-24T10:00:00+09:00,SEOUL-01,SKU-0001,1,1.00,extra",
    lambda i: ",2026-11-24T10:00:00+09:00,SEOUL-01,SKU-0001,1,1.00",
    lambda i: f"S-{i:09d},yesterday,SEOUL-01,SKU-0001,1,1.00",
    lambda i: f"S-{i:09d},2026-11-24T10:00:00+09:00,SEOUL-01,SKU-0001,many,1.00",
)
"""Kinds of bad row the sample writer mixes in, one after another."""


class SampleTargetError(ValueError):
    """The sample writer will not write to that file."""


def check_sample_target(path: Path, databases: Iterable[Path], *, force: bool) -> None:
    """Refuse ``path`` if it is one of ``databases`` (or their side files) or any SQLite file;
    refuse an existing file that the sample writer did not write, unless ``force``."""
    real = path.resolve()
    for database in databases:
        database = database.resolve()
        side_files = ("", "-wal", "-shm", "-journal", ".db", ".dat", ".dir", ".bak")
        if real.parent == database.parent and real.name in {database.name + s for s in side_files}:
            raise SampleTargetError(
                f"{path} is one of batchapp's databases; it is never overwritten"
            )
    if not real.exists():
        return
    if not real.is_file():
        raise SampleTargetError(f"{path} exists and is not a regular file")
    with real.open("rb") as file:
        head = file.read(len(SQLITE_MAGIC))
        file.seek(0)
        first, second = file.readline(MAX_LINE_BYTES), file.readline(MAX_LINE_BYTES)
    if head == SQLITE_MAGIC:
        raise SampleTargetError(f"{path} is an SQLite database; it is never overwritten")
    written_here = first == (",".join(COLUMNS) + "\n").encode() and (
        not second or _SAMPLE_FIRST_ROW.match(second) is not None
    )
    if not written_here and not force:
        raise SampleTargetError(
            f"{path} exists and is not a sample CSV; add --force to overwrite it"
        )


def write_sample(path: Path, rows: int, bad_fraction: float = 0.0, seed: int = 1) -> SampleStats:
    """Write ``rows`` data lines of realistic sales, about ``bad_fraction`` of them bad.

    Order ids are ``S<seed>-<row>``: files written with the same seed share their ids. The file
    appears whole or not at all (written aside, then renamed over ``path``).
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stats = _write_rows(partial, rows, bad_fraction, seed)
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise SampleTargetError(f"cannot write {path}: {exc.strerror or exc}") from None
    return stats


def _write_rows(path: Path, rows: int, bad_fraction: float, seed: int) -> SampleStats:
    rng = random.Random(seed)
    start = datetime(2026, 10, 1, tzinfo=ZoneInfo("Asia/Seoul"))
    stores = [f"{city}-{n:02d}" for city in ("SEOUL", "BUSAN", "INCHEON") for n in range(1, 5)]
    bad = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(",".join(COLUMNS) + "\n")
        batch: list[str] = []
        for i in range(rows):
            if bad_fraction and rng.random() < bad_fraction:
                batch.append(_BAD_ROWS[bad % len(_BAD_ROWS)](i))
                bad += 1
            else:
                sold_at = start + timedelta(seconds=rng.randrange(60 * 86400))
                cents = rng.randrange(50, 30000)
                batch.append(
                    f"S{seed}-{i:09d},{sold_at.isoformat()},{rng.choice(stores)},"
                    f"SKU-{rng.randrange(1, 500):04d},{rng.randrange(1, 20)},"
                    f"{cents // 100}.{cents % 100:02d}"
                )
            if len(batch) >= 10_000:
                out.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            out.write("\n".join(batch) + "\n")
    return SampleStats(rows=rows, bad=bad)
