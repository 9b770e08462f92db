"""A declared import's chunk written in the ledger's transaction: rows, repeats, rejects.

A key may appear once in a file. Chunks commit in any order, so the row that holds a key in the
table is always the earliest line committed so far: a chunk that brings an earlier line takes
the key over, and every later line of it is rejected naming the earliest. Whatever the order,
the file's first occurrence wins and the counts come out the same. A key stored by an earlier
import is left alone (ON CONFLICT DO NOTHING): re-importing a file adds nothing.

:func:`write_chunk` is the one entry point; :func:`insert_rows` picks how rows go in: by COPY
through a staging table on PostgreSQL (:mod:`batchapp.jobs.import_copy`), by executemany on
SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table

from batchapp.jobs.csv_rows import RAW_KEEP
from batchapp.jobs.import_copy import copy_rows
from batchapp.jobs.import_spec import ImportSpec
from batchapp.storage.engines import placeholder

HOLDER_BATCH = 2_000


@dataclass(frozen=True)
class Prepared:
    rows: list[tuple[Any, ...]]
    """The table's data columns (``ImportSpec.stored_names``), each row ending with its line."""
    rejects: list[tuple[int, str, str]]
    """(line, reason, the line's start)"""


@dataclass
class Repeats:
    """What a chunk found out about keys that occur on more than one line of the file."""

    rejects: list[tuple[int, str, str, int]]
    """(line, reason, the row, the key's first line), for the rejects table"""
    own: int = 0
    """this chunk's lines rejected as repeats of an earlier line"""
    taken_over: int = 0
    """other chunks' lines, imported before, now rejected as repeats of this chunk's line"""


@dataclass(frozen=True)
class Written:
    imported: int
    rejected: int
    new: int


def write_chunk(
    connection: Connection, spec: ImportSpec, job_id: str, prepared: Prepared
) -> Written:
    """Insert the chunk's rows and rejects; settle keys repeated in the file."""
    new = 0
    repeats = Repeats(rejects=[])
    if prepared.rows:
        rows = [(*row, job_id) for row in prepared.rows]
        new = insert_rows(connection, spec, rows)
        if new < len(rows):  # some keys were there already: from this file, or from before
            repeats = _settle_repeats(connection, spec, job_id, prepared.rows)
    rejects: list[tuple[Any, ...]] = [(job_id, *r, None) for r in prepared.rejects]
    rejects += [(job_id, *reject) for reject in repeats.rejects]
    if rejects:
        connection.exec_driver_sql(insert_sql(connection, spec.rejects, None), rejects)
    imported = len(prepared.rows) - repeats.own - repeats.taken_over
    rejected = len(prepared.rejects) + repeats.own + repeats.taken_over
    return Written(imported=imported, rejected=rejected, new=new)


def insert_rows(connection: Connection, spec: ImportSpec, rows: list[tuple[Any, ...]]) -> int:
    """Insert rows (data columns, line, job id) skipping keys already there; how many were new.
    PostgreSQL takes them by COPY, SQLite by one executemany."""
    names = (*spec.stored_names, spec.line_column, spec.job_column)
    if connection.dialect.name == "postgresql":
        return copy_rows(connection, spec, names, rows)
    insert = insert_sql(connection, spec.table, spec.key.stored_name, names)
    return max(connection.exec_driver_sql(insert, rows).rowcount, 0)


def _settle_repeats(
    connection: Connection, spec: ImportSpec, job_id: str, rows: Sequence[tuple[Any, ...]]
) -> Repeats:
    """Reject this chunk's lines whose key an earlier line of the file holds; take over the
    keys that a later line holds (rejecting that line instead). Runs only when an insert
    conflicted."""
    at = spec.key_index
    holders = _holders(connection, spec, job_id, [row[at] for row in rows])
    repeats = Repeats(rejects=[])
    for row in rows:  # in line order, so a key repeated within the chunk keeps its first line
        key, line = row[at], row[-1]
        holder = holders.get(key)
        if holder is None or holder[-1] == line:
            continue  # an earlier import's row (a duplicate), or this very row
        if holder[-1] < line:
            reason = repeat_reason(spec, key, holder[-1])
            repeats.rejects.append((line, reason, row_text(spec, row), holder[-1]))
            repeats.own += 1
            continue
        _take_over(connection, spec, job_id, row, holder[-1])
        reason = repeat_reason(spec, key, line)
        repeats.rejects.append((holder[-1], reason, row_text(spec, holder), line))
        repeats.taken_over += 1
        holders[key] = tuple(row)
    return repeats


def _holders(
    connection: Connection, spec: ImportSpec, job_id: str, keys: list[Any]
) -> dict[Any, tuple[Any, ...]]:
    """This job's rows holding these keys (data columns, then the line), locked on PostgreSQL
    until the chunk commits (rows of earlier imports only make duplicates, so they are not
    read: a re-import stays fast)."""
    marker = placeholder(connection)
    quote = connection.dialect.identifier_preparer.quote
    key = quote(spec.key.stored_name)
    columns = ", ".join(quote(name) for name in (*spec.stored_names, spec.line_column))
    lock = " FOR UPDATE" if connection.dialect.name == "postgresql" else ""
    at = spec.key_index
    found: dict[Any, tuple[Any, ...]] = {}
    for start in range(0, len(keys), HOLDER_BATCH):
        batch = sorted(set(keys[start : start + HOLDER_BATCH]))
        markers = ", ".join(marker for _ in batch)
        # Sorted keys, so two chunks lock shared rows in the same order.
        sql = (
            f"SELECT {columns} FROM {quote(spec.table.name)} "
            f"WHERE {quote(spec.job_column)} = {marker} AND {key} IN ({markers}) "
            f"ORDER BY {key}{lock}"
        )
        for selected in connection.exec_driver_sql(sql, (job_id, *batch)):
            found[selected[at]] = tuple(selected)
    return found


def _take_over(
    connection: Connection, spec: ImportSpec, job_id: str, row: tuple[Any, ...], line: int
) -> None:
    """Put ``row`` (an earlier line) in place of the key's row from ``line``, and re-point the
    rejects that named ``line`` as the key's first occurrence."""
    marker = placeholder(connection)
    quote = connection.dialect.identifier_preparer.quote
    at = spec.key_index
    names = [n for i, n in enumerate(spec.stored_names) if i != at]
    values = [v for i, v in enumerate(row[:-1]) if i != at]
    assignments = ", ".join(f"{quote(name)} = {marker}" for name in names)
    assignments += f", {quote(spec.job_column)} = {marker}, {quote(spec.line_column)} = {marker}"
    connection.exec_driver_sql(
        f"UPDATE {quote(spec.table.name)} SET {assignments} "
        f"WHERE {quote(spec.key.stored_name)} = {marker}",
        (*values, job_id, row[-1], row[at]),
    )
    connection.exec_driver_sql(
        f"UPDATE {spec.rejects.name} SET reason = {marker}, first_line = {marker} "
        f"WHERE job_id = {marker} AND first_line = {marker}",
        (repeat_reason(spec, row[at], row[-1]), row[-1], job_id, line),
    )


def repeat_reason(spec: ImportSpec, key: Any, first_line: int) -> str:
    name = spec.key.name
    article = "an" if name[:1] in "aeiou" else "a"
    return f"{name} {key!r} repeats line {first_line} (a file may hold {article} {name} once)"


def row_text(spec: ImportSpec, row: Sequence[Any]) -> str:
    """A stored row as a CSV line of the declared columns (times in UTC), for a repeat's
    reject."""
    position = {name: index for index, name in enumerate(spec.stored_names)}
    fields = [column.type.show(row[position[column.stored_name]]) for column in spec.columns]
    return storable(",".join(fields)[:RAW_KEEP])


def storable(text: str) -> str:
    """Text PostgreSQL can store: NUL becomes U+FFFD, as undecodable bytes do."""
    return text.replace("\0", "\ufffd")


def insert_sql(
    connection: Connection, table: Table, key: str | None, names: Sequence[str] | None = None
) -> str:
    """A plain positional INSERT for DB-API executemany: no per-row SQLAlchemy work."""
    marker = placeholder(connection)
    quote = connection.dialect.identifier_preparer.quote
    names = names or [column.name for column in table.columns]
    values = ", ".join(marker for _ in names)
    target = f"({quote(key)})" if key else ""
    return (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"VALUES ({values}) ON CONFLICT {target} DO NOTHING"
    )
