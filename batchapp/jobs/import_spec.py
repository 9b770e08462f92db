"""A declared CSV import, checked: its columns, its key, and the table they fill.

Every mistake in a declaration is a :class:`~batchapp.jobs.columns.DeclarationError` of one
line raised when the declaring module is imported, so a worker or the CLI refuses to start
(discovery reports it) instead of failing on the first file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, String, Table

from batchapp.jobs.columns import CsvType, DeclarationError
from batchapp.storage.tables import import_rejects
from batchapp.storage.tables import metadata as batchapp_tables

IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
# What batchapp adds to a declared table, for the repeated-key logic and for tracing a row back.
JOB_COLUMN = "batch_job_id"
LINE_COLUMN = "batch_line"
RESERVED_PREFIX = "batch_"
_TYPES = "CsvInt, CsvDecimal, CsvText, CsvDate, CsvTimestamp or CsvBool"

DeriveFunction = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class CsvColumn:
    """One column of the file: its header ``name``, its type, whether it is the ``key`` (one
    row per key value in the table), whether it may be empty (``optional``: stored as NULL),
    and the table column it fills (``db_name``, default ``name``)."""

    name: str
    type: CsvType
    key: bool = False
    optional: bool = False
    db_name: str | None = None

    @property
    def stored_name(self) -> str:
        return self.db_name or self.name


@dataclass(frozen=True)
class Derived:
    """A table column computed from the row: ``function(row)`` gets the file's values by
    column name (see each type for what it sees; None for an empty optional one) and those of
    the derived columns declared before it, and returns a value of ``type``; a value that does
    not fit ``type``, or an exception, rejects the line. ``optional``: None is allowed."""

    name: str
    type: CsvType
    function: DeriveFunction
    optional: bool = False

    @property
    def stored_name(self) -> str:
        return self.name


@dataclass(frozen=True)
class ImportSpec:
    """A checked declaration; :func:`check_spec` makes one."""

    job: str
    table: Table
    rejects: Table
    columns: tuple[CsvColumn, ...]
    derived: tuple[Derived, ...]
    key: CsvColumn
    stored_names: tuple[str, ...]
    """the data columns of the table, in its order (a parsed row is a tuple of these)"""
    job_column: str
    line_column: str

    @property
    def header(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def key_index(self) -> int:
        return self.stored_names.index(self.key.stored_name)


def check_spec(
    job: str,
    *,
    table: str | Table,
    columns: Iterable[CsvColumn],
    derived: Iterable[Derived] = (),
    rejects: Table = import_rejects,
    job_column: str = JOB_COLUMN,
    line_column: str = LINE_COLUMN,
) -> ImportSpec:
    """The declaration checked, with its table made (a :class:`Table` given is used as is: the
    built-in sales import names its own)."""
    columns, derived = tuple(columns), tuple(derived)
    where = f"csv_import {job!r}"
    if not columns:
        raise DeclarationError(f"{where}: declare at least one column")
    for column in columns:
        _check_column(where, column)
    for extra in derived:
        _check_derived(where, extra)
    _check_names(where, columns, derived, (job_column, line_column), own=isinstance(table, Table))
    keys = [column for column in columns if column.key]
    if len(keys) != 1:
        named = ", ".join(repr(c.name) for c in keys) or "none"
        raise DeclarationError(f"{where}: declare exactly one key column (key=True), got {named}")
    key = keys[0]
    if key.optional:
        raise DeclarationError(f"{where}: key column {key.name!r} cannot be optional")
    stored = [item.stored_name for item in _items(columns, derived)]
    if isinstance(table, Table):
        # A column a job keeps (info={"imported": False}, the report's sales.folded) is not the
        # file's: an import leaves it NULL.
        names = [
            c.name
            for c in table.columns
            if c.name not in (job_column, line_column) and c.info.get("imported", True)
        ]
        if sorted(names) != sorted(stored):
            raise DeclarationError(f"{where}: columns {stored} do not match table {table.name}")
        stored = names
        made = table
    else:
        made = _make_table(where, table, columns, derived, key, job_column, line_column)
    return ImportSpec(
        job=job,
        table=made,
        rejects=rejects,
        columns=columns,
        derived=derived,
        key=key,
        stored_names=tuple(stored),
        job_column=job_column,
        line_column=line_column,
    )


def _check_column(where: str, column: Any) -> None:
    if not isinstance(column, CsvColumn):
        raise DeclarationError(f"{where}: columns must be CsvColumn(...), got {column!r}")
    name = column.name
    if not isinstance(name, str) or not name or name != name.strip().lower():
        raise DeclarationError(
            f"{where}: column name {name!r} must be non-empty lowercase text without "
            "surrounding blanks (headers are matched in lowercase)"
        )
    if any(c in name for c in ',"\r\n\0'):
        raise DeclarationError(f"{where}: column name {name!r} holds a comma, quote or newline")
    if not isinstance(column.type, CsvType):
        raise DeclarationError(
            f"{where}: column {name!r} has unknown type {column.type!r} (use {_TYPES})"
        )


def _check_derived(where: str, derived: Any) -> None:
    if not isinstance(derived, Derived):
        raise DeclarationError(f"{where}: derived columns must be Derived(...), got {derived!r}")
    if not isinstance(derived.type, CsvType):
        raise DeclarationError(
            f"{where}: derived column {derived.name!r} has unknown type {derived.type!r} "
            f"(use {_TYPES})"
        )
    if not callable(derived.function):
        raise DeclarationError(f"{where}: derived column {derived.name!r} needs a function")


def _check_names(
    where: str,
    columns: tuple[CsvColumn, ...],
    derived: tuple[Derived, ...],
    bookkeeping: tuple[str, str],
    *,
    own: bool,
) -> None:
    header = [column.name for column in columns]
    stored = [item.stored_name for item in _items(columns, derived)]
    for names, what in ((header, "column"), (stored, "table column")):
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DeclarationError(f"{where}: {what} {repeated[0]!r} is declared twice")
    for extra in derived:
        if extra.name in header:
            raise DeclarationError(f"{where}: derived column {extra.name!r} is also a file column")
    for name in stored:
        if not isinstance(name, str) or not IDENTIFIER.match(name):
            raise DeclarationError(
                f"{where}: table column {name!r} is not a lowercase SQL name "
                "(a-z, 0-9, _; give db_name= for a header that is not one)"
            )
        if name in bookkeeping or (not own and name.startswith(RESERVED_PREFIX)):
            raise DeclarationError(
                f"{where}: column {name!r} clashes with batchapp's bookkeeping columns "
                f"({', '.join(bookkeeping)}; names starting {RESERVED_PREFIX!r} are reserved)"
            )


def _make_table(
    where: str,
    name: str,
    columns: tuple[CsvColumn, ...],
    derived: tuple[Derived, ...],
    key: CsvColumn,
    job_column: str,
    line_column: str,
) -> Table:
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise DeclarationError(
            f"{where}: table {name!r} is not a lowercase SQL name (a-z, 0-9, _; 1-63 characters)"
        )
    if name.startswith(RESERVED_PREFIX) or name in batchapp_tables.tables:
        raise DeclarationError(
            f"{where}: table {name!r} is one of batchapp's own tables (names starting "
            f"{RESERVED_PREFIX!r} are reserved)"
        )
    data = [
        Column(
            item.stored_name,
            item.type.sql_type(),
            primary_key=item is key,
            nullable=item.optional,
        )
        for item in _items(columns, derived)
    ]
    # Each declared table has its own metadata: batchapp's ensure_schema never touches it.
    return Table(
        name,
        MetaData(),
        *data,
        Column(job_column, String(32), nullable=False),
        Column(line_column, BigInteger, nullable=False),
    )


def _items(
    columns: tuple[CsvColumn, ...], derived: tuple[Derived, ...]
) -> list[CsvColumn | Derived]:
    """Every table data column as declared: the file's, then the derived ones."""
    return [*columns, *derived]
