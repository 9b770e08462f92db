"""Periodic runs never overlap: one ``batch_locks`` row per job name while a run is going.

The lock is taken at submit and claimed again when the run starts, its lifetime counted from
there: a run that waited in a queue past its lock's lifetime finds the lock held by a later
run and steps aside instead of running beside it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select, update

from batchapp.storage.engines import dialect_insert
from batchapp.storage.tables import locks

if TYPE_CHECKING:
    # Only for annotations: the settings module pulls in Celery, which the ledger never needs.
    from batchapp.settings import Settings


def lock_ttl(settings: Settings) -> timedelta:
    """How long a periodic run's lock outlives a worker that died holding it."""
    return timedelta(seconds=2 * settings.task_time_limit)


def take(
    connection: Connection, name: str, job_id: str, now: datetime, ttl: timedelta
) -> str | None:
    """Hold the job's lock for ``job_id`` from ``now``; returns the other run holding it, if any."""
    connection.execute(locks.delete().where(locks.c.name == name, locks.c.expires_at < now))
    renewed = connection.execute(
        update(locks)
        .where(locks.c.name == name, locks.c.job_id == job_id)
        .values(expires_at=now + ttl)
    ).rowcount
    if renewed:
        return None
    taken = connection.execute(
        dialect_insert(connection.dialect.name, locks)
        .values(name=name, job_id=job_id, expires_at=now + ttl)
        .on_conflict_do_nothing()
        .returning(locks.c.job_id)
    ).first()
    if taken is not None:
        return None
    holder: str = connection.execute(
        select(locks.c.job_id).where(locks.c.name == name)
    ).scalar_one()
    return holder


def release(connection: Connection, job_id: str) -> None:
    """Let the next run of the job start (a finished run calls this)."""
    connection.execute(locks.delete().where(locks.c.job_id == job_id))
