"""A chunk's rows into its table on PostgreSQL by COPY: the rows go into a temporary staging
table (one ``COPY ... FROM STDIN``), then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``
moves them, in line order, into the table. Same effect as the row-by-row INSERT, in the same
transaction; the staging table is emptied when it commits or rolls back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from batchapp.jobs.import_spec import ImportSpec


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
    driver: Any = connection.connection.driver_connection  # psycopg's, for its COPY API
    with driver.cursor() as cursor, cursor.copy(f"COPY {stage} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    result = connection.exec_driver_sql(
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} "
        f"ORDER BY {quote(spec.line_column)} ON CONFLICT ({quote(spec.key.stored_name)}) DO NOTHING"
    )
    return max(result.rowcount, 0)
