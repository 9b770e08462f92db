"""A chunk's rows into its table on PostgreSQL by COPY: the rows go into a temporary staging
table (one ``COPY ... FROM STDIN``), then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``
moves them, in line order, into the table. Same effect as the row-by-row INSERT, in the same
transaction; the staging table is emptied when it commits or rolls back.

The COPY is binary when every column's type has a binary form batchapp's values fit exactly
(text, integers of 4 or 8 bytes, timestamp, date, boolean): the server then parses nothing and
psycopg formats nothing, 2-5x less work than text. Any other column type (a table made by hand
with ``numeric`` or ``timestamptz``, say) keeps the text COPY, which converts as an INSERT would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from batchapp.jobs.import_spec import ImportSpec

# bool, int8, int4, text, bpchar, varchar, date, timestamp: their binary forms take the values
# LineParser makes (str, int, bool, date, naive datetime) as they are.
_BINARY_SAFE_OIDS = frozenset({16, 20, 23, 25, 1042, 1043, 1082, 1114})


def staging_name(table: str) -> str:
    """A temporary table's name per target (a hash: a long name plus a prefix would be cut to
    63 characters, and two targets could then share one)."""
    return f"batch_stage_{hashlib.sha256(table.encode()).hexdigest()[:16]}"


def copy_rows(
    connection: Connection, spec: ImportSpec, names: Sequence[str], rows: list[tuple[Any, ...]]
) -> int:
    """Insert ``rows`` (columns ``names``); returns how many were new."""
    quote = connection.dialect.identifier_preparer.quote
    table = quote(spec.table.name)
    stage = quote(staging_name(spec.table.name))
    columns = ", ".join(quote(name) for name in names)
    # LIKE copies columns and NOT NULLs but no key: a key twice in a chunk is staged twice, and
    # ON CONFLICT below keeps the earlier line (the repeat logic then settles the later one).
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS"
    )
    oids = _column_oids(connection, staging_name(spec.table.name), names)
    binary = all(oid in _BINARY_SAFE_OIDS for oid in oids)
    form = " (FORMAT BINARY)" if binary else ""
    driver: Any = connection.connection.driver_connection  # psycopg's, for its COPY API
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY {stage} ({columns}) FROM STDIN{form}") as copy,
    ):
        if binary:
            copy.set_types(oids)
        for row in rows:
            copy.write_row(row)
    result = connection.exec_driver_sql(
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} "
        f"ORDER BY {quote(spec.line_column)} ON CONFLICT ({quote(spec.key.stored_name)}) DO NOTHING"
    )
    return max(result.rowcount, 0)


def _column_oids(connection: Connection, stage: str, names: Sequence[str]) -> list[int]:
    """The type oid of each of ``names`` in the temporary table ``stage``, in that order."""
    result = connection.exec_driver_sql(
        "SELECT attname, atttypid::int FROM pg_attribute "
        "WHERE attrelid = to_regclass(%(stage)s) AND attnum > 0 AND NOT attisdropped",
        {"stage": f"pg_temp.{stage}"},
    )
    found = {name: oid for name, oid in result}
    return [found.get(name, 0) for name in names]
