"""The sales CSV format: one sale per line, a declared import into the ``sales`` table.

    order_id,sold_at,store,sku,quantity,unit_price
    S-000000001,2026-11-24T13:05:09+09:00,SEOUL-03,SKU-0042,2,19.90

- ``order_id``: 1-64 characters of letters, digits, ``-`` and ``_``; the unique key.
- ``sold_at``: ISO 8601; a time without an offset is read in the configured timezone, and
  must exist there (not in a daylight-saving gap).
- ``store``, ``sku``: 1-32 characters.
- ``quantity``: an integer from 1 to 1,000,000 (ASCII digits).
- ``unit_price``: a decimal with at most 2 places, from 0 to 999,999,999.99 (ASCII digits).

The table also holds ``sold_on`` (the local day of ``sold_at``) and ``amount_cents``
(quantity times unit price). Header and line rules are those of every declared import
(:mod:`batchapp.jobs.csv_rows`). Also here: a writer of realistic sample files.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from batchapp.jobs.columns import CsvDate, CsvDecimal, CsvInt, CsvText, CsvTimestamp
from batchapp.jobs.csv_rows import MAX_LINE_BYTES, RAW_KEEP, HeaderError, LineParser, Row
from batchapp.jobs.csv_rows import read_header as read_declared_header
from batchapp.jobs.import_spec import CsvColumn, Derived, check_spec
from batchapp.storage.tables import sales, sales_rejects

__all__ = [
    "COLUMNS",
    "MAX_LINE_BYTES",
    "RAW_KEEP",
    "SALES",
    "HeaderError",
    "Row",
    "RowParser",
    "SampleStats",
    "SampleTargetError",
    "check_sample_target",
    "read_header",
    "write_sample",
]

MAX_QUANTITY = 1_000_000
SQLITE_MAGIC = b"SQLite format 3\x00"

SALES = check_spec(
    "import_csv",
    table=sales,
    # Kept from before declared imports existed: its own rejects table and bookkeeping names.
    rejects=sales_rejects,
    job_column="job_id",
    line_column="line",
    columns=[
        CsvColumn(
            "order_id",
            CsvText(
                max_len=64, pattern=r"[A-Za-z0-9_-]+", pattern_help="letters, digits, '-' or '_'"
            ),
            key=True,
        ),
        CsvColumn("sold_at", CsvTimestamp()),
        CsvColumn("store", CsvText(max_len=32)),
        CsvColumn("sku", CsvText(max_len=32)),
        CsvColumn("quantity", CsvInt(min=1, max=MAX_QUANTITY)),
        CsvColumn(
            "unit_price", CsvDecimal(places=2, max="999999999.99"), db_name="unit_price_cents"
        ),
    ],
    derived=[
        Derived("sold_on", CsvDate(), lambda row: row["sold_at"].date()),
        Derived("amount_cents", CsvInt(min=0), lambda row: row["quantity"] * row["unit_price"]),
    ],
)
COLUMNS = SALES.header

_SAMPLE_FIRST_ROW = re.compile(rb"(S[0-9]*-[0-9]{9})?,")


def read_header(first_line: bytes) -> tuple[str, ...]:
    """The column order a sales header gives; :class:`HeaderError` says what is wrong."""
    return read_declared_header(first_line, COLUMNS)


class RowParser:
    """Turns one sales line into a :data:`Row` in the ``sales`` table's column order
    (order_id, sold_at in UTC, sold_on, store, sku, quantity, unit and total cents), or a
    reason it is rejected."""

    def __init__(
        self,
        columns: tuple[str, ...],
        tz: ZoneInfo,
        to_db_time: Callable[[datetime], Any],
        to_db_date: Callable[[date], Any],
    ) -> None:
        self._parse = LineParser(SALES, tuple(columns), tz, to_db_time, to_db_date)

    def __call__(self, line: str) -> Row | str:
        return self._parse(line)


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
