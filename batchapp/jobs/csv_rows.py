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
    _convert: Callable[[list[str], ZoneInfo], Row | str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_convert", self._compile())

    def _storer(self, kind: CsvType) -> Callable[[Any], Any] | None:
        """What turns a value into what the driver is given; None where it is the value."""
        convert = {"time": self.to_db_time, "date": self.to_db_date}.get(kind.db_kind)
        same_stored = type(kind).stored is CsvType.stored
        if convert is None:
            return None if same_stored else kind.stored
        if same_stored:
            return convert
        return lambda value: convert(kind.stored(value))

    def _compile(self) -> Callable[[list[str], ZoneInfo], Row | str]:
        """One function for this spec and header order, written out column by column.

        This runs per line, and a loop over the columns with their settings unpacked per field
        cost as much as the checks themselves. The source holds only generated names and
        numbers: every name, function and message comes in through its namespace (so does
        dataclasses' generated ``__init__``). It checks in the same order and words every
        reason as the columns' own ``read``/``check_derived`` do.
        """
        position = {name: index for index, name in enumerate(self.order)}
        space: dict[str, Any] = {"BadValue": BadValue, "cannot_derive": _cannot_derive}
        code = ["def convert(fields, tz):"]
        value_of: dict[str, str] = {}
        for i, column in enumerate(self.spec.columns):
            space |= {f"read{i}": column.type.read, f"bad{i}": f"{column.name}: "}
            code.append(f"    text = fields[{position[column.name]}].strip()")
            pad = "    "
            if column.optional:
                code += ["    if not text:", f"        v{i} = None", "    else:"]
                pad = "        "
            code += [
                f"{pad}try:",
                f"{pad}    v{i} = read{i}(text, tz)",
                f"{pad}except BadValue as exc:",
                f"{pad}    return bad{i} + str(exc)",
            ]
            value_of[column.name] = f"v{i}"
        if self.spec.derived:
            space |= {f"name{i}": column.name for i, column in enumerate(self.spec.columns)}
            names = ", ".join(f"name{i}: v{i}" for i in range(len(self.spec.columns)))
            code.append(f"    values = {{{names}}}")
        for j, derived in enumerate(self.spec.derived):
            space |= {
                f"function{j}": derived.function,
                f"check{j}": derived.type.check_derived,
                f"derived{j}": derived.name,
                f"dbad{j}": f"{derived.name}: ",
                f"none{j}": f"{derived.name}: derived no value",
            }
            code += [
                "    try:",
                f"        d{j} = function{j}(values)",
                "    except Exception as exc:",
                f"        return cannot_derive(derived{j}, exc)",
                f"    if d{j} is not None:",
                "        try:",
                f"            d{j} = check{j}(d{j})",
                "        except BadValue as exc:",
                f"            return dbad{j} + str(exc)",
            ]
            if not derived.optional:
                code += ["    else:", f"        return none{j}"]
            code.append(f"    values[derived{j}] = d{j}")
            value_of[derived.name] = f"d{j}"
        kinds = {c.stored_name: (c.name, c.type) for c in self.spec.columns}
        kinds |= {d.name: (d.name, d.type) for d in self.spec.derived}
        stored = []
        for k, stored_name in enumerate(self.spec.stored_names):
            name, kind = kinds[stored_name]
            value, store = value_of[name], self._storer(kind)
            if store is None:
                stored.append(value)
            else:
                space[f"store{k}"] = store
                stored.append(f"(None if {value} is None else store{k}({value}))")
        code.append(f"    return ({', '.join(stored)},)")
        exec("\n".join(code), space)  # generated from names and numbers only
        convert: Callable[[list[str], ZoneInfo], Row | str] = space["convert"]
        return convert

    def __call__(self, line: str) -> Row | str:
        fields = split_fields(line)
        if isinstance(fields, str):
            return fields
        if len(fields) != len(self.spec.columns):
            return f"expected {len(self.spec.columns)} fields, got {len(fields)}"
        return self._convert(fields, self.tz)


def _cannot_derive(name: str, exc: Exception) -> str:
    """A derived function's error as the line's reason (one line, cut short)."""
    text = " ".join(str(exc).replace("\0", "").split())[:_REASON_KEEP]
    return f"{name}: cannot be derived ({type(exc).__name__}: {text})"
