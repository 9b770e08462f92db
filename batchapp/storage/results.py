"""The SQL of Celery's result table (``celery_taskmeta``), one statement per store or read.

A result is one ``INSERT ... ON CONFLICT DO UPDATE`` on a pooled connection, and a status read
one indexed SELECT; ``date_done`` goes through Celery's own column type, so it is stored and
read exactly as Celery's backend does on each dialect. The backend class that uses these is
:mod:`batchapp.internals.result_backend`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from celery import states
from sqlalchemy import Dialect, Engine
from sqlalchemy.types import TypeEngine

from batchapp.storage.engines import (
    sqlite_cursor,
)

# Celery's columns a store writes and a read returns ('children' is missing before Celery 5.0).
COLUMNS = ("status", "result", "date_done", "traceback", "children")
UPSERT, SELECT = 0, 1


def rejection_id(task_id: str, task_name: str) -> str:
    """The result id under which a worker records that it refused a message naming
    ``task_name`` with ``task_id``: an id of its own, so a refused message never writes the
    result of the id it carries (anyone who can publish can put any id in a message)."""
    digest = hashlib.sha256(f"{task_name}\0{task_id}".encode()).hexdigest()[:48]
    return f"rejected-{digest}"


def run(engine: Engine, statement: int, sql: str, params: tuple[Any, ...]) -> Sequence[Any] | None:
    """One statement in a transaction of its own; the row it selects, if it is a select."""
    if engine.dialect.name == "sqlite":
        with sqlite_cursor(engine, write=statement == UPSERT) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone() if statement == SELECT else None
    with engine.connect() as connection:
        result = connection.exec_driver_sql(sql, params)
        row = result.first() if statement == SELECT else None
        connection.commit()
        return row


@cache
def processor(column_type: TypeEngine[Any], dialect: Dialect, kind: str) -> Callable[[Any], Any]:
    """The column type's bind or result conversion on ``dialect`` (identity where it has none)."""
    if kind == "bind":
        convert = column_type.bind_processor(dialect)
    else:
        convert = column_type.result_processor(dialect, None)
    return convert or _same


def _same(value: Any) -> Any:
    return value


@cache
def statements(
    table: str, mark: str, new_id: str | None, stored: tuple[str, ...]
) -> tuple[str, str]:
    """(upsert, select) for Celery's result table, built once per table, driver and columns."""
    updates = ", ".join(f"{name} = excluded.{name}" for name in stored)
    columns = ", ".join(("id", "task_id", *stored) if new_id else ("task_id", *stored))
    values = ", ".join(([new_id] if new_id else []) + [mark] * (len(stored) + 1))
    upsert = (
        f"INSERT INTO {table} ({columns}) VALUES ({values}) "
        f"ON CONFLICT (task_id) DO UPDATE SET {updates} "
        # Like Celery's backend: once SUCCESS is stored, a repeated run cannot replace it.
        f"WHERE {table}.status != '{states.SUCCESS}'"
    )
    select = f"SELECT {', '.join(stored)} FROM {table} WHERE task_id = {mark}"
    return upsert, select
