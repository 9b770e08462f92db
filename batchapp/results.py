"""Celery's database result backend, made fast for SQLite and PostgreSQL.

Users keep writing standard ``db+sqlite:///...`` and ``db+postgresql://...`` URLs and the table
stays Celery's own ``celery_taskmeta``, so ``celery result`` and Flower read it. What changes:

- a result is one ``INSERT ... ON CONFLICT DO UPDATE`` on a pooled connection, instead of a new
  engine and ORM session with a SELECT, a SELECT FOR UPDATE, an INSERT and a commit;
- a status read is one indexed SELECT on a pooled connection (Celery's caller side makes a new
  engine for every read);
- ``get()`` polls from 0.5 ms and backs off to the caller's ``interval`` (0.5 s by default), so a
  result is seen within about a millisecond of landing instead of up to half a second later.

Extended results (``result_extended``) and other databases keep Celery's own code path.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import cache
from typing import Any

from celery import states
from celery.backends.database import DatabaseBackend as CeleryDatabaseBackend
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.utils.encoding import ensure_bytes
from sqlalchemy import Engine

from batchapp.db import engine_for, placeholder

FIRST_POLL_S = 0.0005
POLL_BACKOFF = 1.15
FAST_DIALECTS = frozenset({"sqlite", "postgresql"})
_COLUMNS = ("status", "result", "date_done", "traceback", "children")


class DatabaseBackend(CeleryDatabaseBackend):  # type: ignore[misc]
    """Celery's database backend with one-statement writes and back-off polling reads."""

    def _fast_engine(self) -> Engine | None:
        """Our pooled engine, where the fast path applies; None means use Celery's code."""
        table = self.task_cls.__table__
        if self.extended_result or table.schema is not None:
            return None
        engine = engine_for(self.url)
        return engine if engine.dialect.name in FAST_DIALECTS else None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> None:
        engine = self._fast_engine()
        if engine is None:
            super()._store_result(task_id, result, state, traceback, request, **kwargs)
            return
        meta = self._get_result_meta(
            result=ensure_bytes(self.encode(result)),
            state=state,
            traceback=traceback,
            request=request,
            format_date=False,
            encode=True,
        )
        children = meta.get("children")
        date_done = meta["date_done"]
        if date_done is not None:
            date_done = date_done.astimezone(UTC).replace(tzinfo=None)
            if engine.dialect.name == "sqlite":
                # The text form SQLAlchemy's DateTime uses on SQLite, so Celery reads it back.
                date_done = date_done.isoformat(" ", "microseconds")
        values = (
            task_id,
            state,
            meta["result"],
            date_done,
            traceback,
            ensure_bytes(self.encode(children)) if children else None,
        )
        with engine.connect() as connection:
            connection.exec_driver_sql(self._upsert_sql(engine), values)
            connection.commit()

    def _upsert_sql(self, engine: Engine) -> str:
        return self._statements(engine)[0]

    def _statements(self, engine: Engine) -> tuple[str, str]:
        table = self.task_cls.__table__
        # Celery's id comes from a sequence on PostgreSQL (the ORM fills it in); on SQLite it
        # is the rowid.
        sequence = table.c.id.default
        new_id = f"nextval('{sequence.name}')" if engine.dialect.name == "postgresql" else None
        return _statements(table.name, placeholder(engine), new_id)

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        engine = self._fast_engine()
        if engine is None:
            return super()._get_task_meta_for(task_id)  # type: ignore[no-any-return]
        sql = self._statements(engine)[1]
        with engine.connect() as connection:
            row = connection.exec_driver_sql(sql, (task_id,)).first()
        if row is None:
            data: dict[str, Any] = {"task_id": task_id, "status": states.PENDING}
            data |= {"result": None, "traceback": None, "date_done": None, "children": None}
        else:
            status, result, date_done, traceback, children = row
            if isinstance(date_done, str):
                date_done = datetime.fromisoformat(date_done)
            data = {
                "task_id": task_id,
                "status": status,
                "result": self._decode_stored_result(result),
                "traceback": traceback,
                "date_done": date_done,
                "children": self.decode(children) if children is not None else None,
            }
        meta: dict[str, Any] = self.meta_from_decoded(data)
        return meta

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> dict[str, Any]:
        """Poll from 0.5 ms, backing off by 15% to ``interval``, so short tasks return at once."""
        self._ensure_not_eager()
        deadline = None if timeout is None else time.monotonic() + timeout
        nap = min(FIRST_POLL_S, interval)
        while True:
            meta: dict[str, Any] = self.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            if on_interval:
                on_interval()
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CeleryTimeoutError("The operation timed out.")
                nap = min(nap, remaining)
            time.sleep(nap)
            nap = min(nap * POLL_BACKOFF, interval)


@cache
def _statements(table: str, mark: str, new_id: str | None) -> tuple[str, str]:
    """(upsert, select) for Celery's result table, built once per table and driver."""
    updates = ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS)
    columns = ", ".join(("id", "task_id", *_COLUMNS) if new_id else ("task_id", *_COLUMNS))
    values = ", ".join(([new_id] if new_id else []) + [mark] * (len(_COLUMNS) + 1))
    upsert = (
        f"INSERT INTO {table} ({columns}) VALUES ({values}) "
        f"ON CONFLICT (task_id) DO UPDATE SET {updates} "
        # Like Celery's backend: once SUCCESS is stored, a repeated run cannot replace it.
        f"WHERE {table}.status != '{states.SUCCESS}'"
    )
    select = f"SELECT {', '.join(_COLUMNS)} FROM {table} WHERE task_id = {mark}"
    return upsert, select
