"""Reading a declared import's file: its header, then each line into a row or a reason.

The header names the declared columns in any order, with no extras. Fields may be quoted; a
record may not span lines, nor hold a NUL. Each field is stripped of surrounding blanks; an
empty field of an optional column is NULL. Columns are checked in declared order and the first
bad one is the line's reason; a check never raises, whatever the line holds.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from batchapp.jobs.columns import BadValue, CsvType
from batchapp.jobs.import_spec import ImportSpec
from batchapp.validate import shown

MAX_LINE_BYTES = 64 * 1024
RAW_KEEP = 200
SHOWN_NAMES = 5
_REASON_KEEP = 120

Reader = Callable[[str, ZoneInfo], Any]
Row = tuple[Any, ...]
"""A line's values as the table stores them, in the order of ``ImportSpec.stored_names``."""


class HeaderError(ValueError):
    """The header line does not name exactly the declared columns."""


def read_header(first_line: bytes, expected: tuple[str, ...]) -> tuple[str, ...]:
    """The column order the header gives; :class:`HeaderError` says what is missing or extra."""
    try:
        text = first_line.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise HeaderError("the header line is not valid UTF-8") from None
    if not text:
        raise HeaderError(f"the first line must be a header: {','.join(expected)}")
    try:
        names = tuple(name.strip().lower() for name in next(csv.reader([text], strict=True)))
    except csv.Error as exc:
        raise HeaderError(f"the header line is not CSV: {exc}") from None
    missing = [name for name in expected if name not in names]
    extra = [name for name in names if name not in expected]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unknown column(s) {_some(extra)}")
    if duplicated:
        problems.append(f"repeated column(s) {_some(duplicated)}")
    if problems:
        raise HeaderError(f"bad header: {'; '.join(problems)} (expected {','.join(expected)})")
    return names


def _some(names: list[str]) -> str:
    """The first few names, each cut short: a bad header can be a 64 KiB line of them."""
    listed = ", ".join(shown(name, 40) for name in names[:SHOWN_NAMES])
    more = len(names) - SHOWN_NAMES
    return f"{listed} and {more:,} more" if more > 0 else listed


def split_fields(line: str) -> list[str] | str:
    """The line's fields, or why it is not a record."""
    if not line:
        return "empty line"
    if "\0" in line:
        # PostgreSQL text cannot hold NUL, and no field has a use for one.
        return f"NUL character at column {line.index(chr(0)) + 1}"
    if '"' in line:
        try:
            return next(csv.reader([line], strict=True))
        except csv.Error as exc:
            return f"malformed quoting: {exc}"
    return line.split(",")


@dataclass(frozen=True)
class LineParser:
    """Turns one line into a :data:`Row`, or a reason it is rejected."""

    spec: ImportSpec
    order: tuple[str, ...]
    """the header's column order"""
    tz: ZoneInfo
    to_db_time: Callable[[datetime], Any]
    to_db_date: Callable[[date], Any]
    _reads: list[tuple[str, int, Reader, bool]] = field(init=False, repr=False)
    _derives: list[tuple[str, Callable[[Any], Any], Callable[[Any], Any], bool]] = field(
        init=False, repr=False
    )
    _stores: list[tuple[str, Callable[[Any], Any] | None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Bound methods and conversions looked up once, not per field: this runs per line.
        position = {name: index for index, name in enumerate(self.order)}
        reads = [(c.name, position[c.name], c.type.read, c.optional) for c in self.spec.columns]
        derives = [
            (d.name, d.function, d.type.check_derived, d.optional) for d in self.spec.derived
        ]
        by_stored = {c.stored_name: (c.name, c.type) for c in self.spec.columns}
        by_stored |= {d.name: (d.name, d.type) for d in self.spec.derived}
        stores = []
        for stored in self.spec.stored_names:
            name, kind = by_stored[stored]
            stores.append((name, self._storer(kind)))
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_derives", derives)
        object.__setattr__(self, "_stores", stores)

    def _storer(self, kind: CsvType) -> Callable[[Any], Any] | None:
        """What turns a value into what the driver is given; None where it is the value."""
        convert = {"time": self.to_db_time, "date": self.to_db_date}.get(kind.db_kind)
        same_stored = type(kind).stored is CsvType.stored
        if convert is None:
            return None if same_stored else kind.stored
        if same_stored:
            return convert
        return lambda value: convert(kind.stored(value))

    def __call__(self, line: str) -> Row | str:
        fields = split_fields(line)
        if isinstance(fields, str):
            return fields
        if len(fields) != len(self._reads):
            return f"expected {len(self._reads)} fields, got {len(fields)}"
        tz = self.tz
        values: dict[str, Any] = {}
        for name, index, read, optional in self._reads:
            text = fields[index].strip()
            if optional and not text:
                values[name] = None
                continue
            try:
                values[name] = read(text, tz)
            except BadValue as exc:
                return f"{name}: {exc}"
        for name, function, check, optional in self._derives:
            try:
                made = function(values)
            except Exception as exc:
                return _cannot_derive(name, exc)
            if made is not None:
                try:
                    made = check(made)
                except BadValue as exc:
                    return f"{name}: {exc}"
            elif not optional:
                return f"{name}: derived no value"
            values[name] = made
        row = []
        for name, store in self._stores:
            value = values[name]
            row.append(value if store is None or value is None else store(value))
        return tuple(row)


def _cannot_derive(name: str, exc: Exception) -> str:
    """A derived function's error as the line's reason (one line, cut short)."""
    text = " ".join(str(exc).replace("\0", "").split())[:_REASON_KEEP]
    return f"{name}: cannot be derived ({type(exc).__name__}: {text})"
