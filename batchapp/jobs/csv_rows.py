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
    _reads: list[tuple[str, int, CsvType, bool]] = field(init=False, repr=False)
    _stores: list[tuple[str, CsvType, Callable[[Any], Any]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        position = {name: index for index, name in enumerate(self.order)}
        reads = [(c.name, position[c.name], c.type, c.optional) for c in self.spec.columns]
        by_stored = {c.stored_name: (c.name, c.type) for c in self.spec.columns}
        by_stored |= {d.name: (d.name, d.type) for d in self.spec.derived}
        stores = []
        for stored in self.spec.stored_names:
            name, kind = by_stored[stored]
            convert = {"time": self.to_db_time, "date": self.to_db_date}.get(kind.db_kind, _same)
            stores.append((name, kind, convert))
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_stores", stores)

    def __call__(self, line: str) -> Row | str:
        fields = split_fields(line)
        if isinstance(fields, str):
            return fields
        if len(fields) != len(self._reads):
            return f"expected {len(self._reads)} fields, got {len(fields)}"
        values: dict[str, Any] = {}
        for name, index, kind, optional in self._reads:
            text = fields[index].strip()
            if optional and not text:
                values[name] = None
                continue
            try:
                values[name] = kind.read(text, self.tz)
            except BadValue as exc:
                return f"{name}: {exc}"
        derived: dict[str, Any] = {}
        for extra in self.spec.derived:
            reason = _derive(
                extra.name, extra.type, extra.function, extra.optional, values, derived
            )
            if reason:
                return reason
        row = []
        for name, kind, convert in self._stores:
            value = derived[name] if name in derived else values[name]
            row.append(None if value is None else convert(kind.stored(value)))
        return tuple(row)


def _derive(
    name: str,
    kind: CsvType,
    function: Callable[[dict[str, Any]], Any],
    optional: bool,
    values: dict[str, Any],
    into: dict[str, Any],
) -> str | None:
    try:
        value = function(values)
    except Exception as exc:
        text = " ".join(str(exc).replace("\0", "").split())[:_REASON_KEEP]
        return f"{name}: cannot be derived ({type(exc).__name__}: {text})"
    if value is None:
        if not optional:
            return f"{name}: derived no value"
        into[name] = None
        return None
    try:
        into[name] = kind.check_derived(value)
    except BadValue as exc:
        return f"{name}: {exc}"
    return None


def _same(value: Any) -> Any:
    return value
