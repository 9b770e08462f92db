"""This process's view of the batchapp database, made in the process that uses it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import worker_init, worker_process_init
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from batchapp.celery import app, settings
from batchapp.jobs import JobContext
from batchapp.storage.engines import configure_engine, driver_url, engine_for

_context: JobContext | None = None
_worker_main_pid = 0


def _forget_inherited_context() -> None:
    global _context
    _context = None


# A forked child (a pool process) opens its own: never its parent's pooled connections.
os.register_at_fork(after_in_child=_forget_inherited_context)


def job_context() -> JobContext:
    """This process's view of the batchapp database, made in this process, never inherited."""
    global _context
    if _context is None:
        _context = _new_context(engine_for(settings.database_url))
    return _context


def _new_context(engine: Any) -> JobContext:
    return JobContext(
        settings=settings, engine=engine, expire_results=lambda: app.backend.cleanup()
    )


@worker_init.connect
def _note_worker_main_process(**_: Any) -> None:
    global _worker_main_pid
    _worker_main_pid = os.getpid()


@worker_process_init.connect
def _open_ledger_in_pool_process(**_: Any) -> None:
    global _context
    # A pool process runs chunks back to back: no ping per checkout (a round trip each). A
    # chunk runs its transaction again on a connection found dead (engines.in_transaction);
    # other work there fails once and is retried as it would be for any database error.
    _context = _new_context(engine_for(settings.database_url, pool_pre_ping=False))


@contextmanager
def ledger_here() -> Iterator[JobContext]:
    """The ledger for this process. The worker's main process forks pool processes, so it
    keeps no pooled connection: it gets an engine without a pool, disposed after use."""
    if os.getpid() != _worker_main_pid:
        yield job_context()
        return
    engine = create_engine(driver_url(settings.database_url), poolclass=NullPool)
    configure_engine(engine)
    try:
        yield _new_context(engine)
    finally:
        engine.dispose()
