"""A lease in the batchapp database: the one beat holding it sends ticks, the others wait.

The holder renews it well before it expires; when the holder dies, the lease runs out and the
next beat to ask takes it. Every entry's last run is recorded under the same lease check, so a
beat that lost its lease (paused past expiry, say) can no longer record, and so never sends.
Times are naive UTC on the database's clock, read inside each statement's transaction: beats
whose hosts' clocks disagree still agree on when a lease ends and when an entry last ran. A beat
converts its own times with :func:`clock_offset`; ``now=`` stands in for the database's clock in
tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from batchapp.jobs.base import utcnow
from batchapp.storage.engines import (
    database_now,
    dialect_insert,
    read_transaction,
    write_transaction,
)
from batchapp.storage.tables import beat_entries, beat_leases, beat_sends


def acquire(
    engine: Engine, name: str, holder: str, duration: timedelta, now: datetime | None = None
) -> bool:
    """Take or renew lease ``name`` for ``holder``; True if it now holds it for ``duration``."""
    try:
        with write_transaction(engine) as connection:
            current = _current(connection, name)
            now = now or database_now(connection)
            if current is None:
                connection.execute(
                    insert(beat_leases).values(name=name, holder=holder, expires_at=now + duration)
                )
                return True
            if current[0] != holder and current[1] > now:
                return False
            connection.execute(
                update(beat_leases)
                .where(beat_leases.c.name == name)
                .values(holder=holder, expires_at=now + duration)
            )
            return True
    except IntegrityError:
        return False  # another beat created the lease between our read and our insert


def clock_offset(engine: Engine) -> timedelta:
    """How far the database's clock is ahead of this host's (negative: behind): this host's
    naive UTC plus it is the database's time."""
    with read_transaction(engine) as connection:
        before = utcnow()
        now = database_now(connection)
        after = utcnow()
    return now - (before + (after - before) / 2)


def release(engine: Engine, name: str, holder: str) -> None:
    """Give the lease up at once (on a clean stop), so a standby need not wait for it to expire."""
    with write_transaction(engine) as connection:
        connection.execute(
            delete(beat_leases).where(beat_leases.c.name == name, beat_leases.c.holder == holder)
        )


def holder_of(engine: Engine, name: str, now: datetime | None = None) -> str | None:
    """Who holds lease ``name`` now, if anyone."""
    with read_transaction(engine) as connection:
        current = _current(connection, name, lock=False)
        now = now or database_now(connection)
    return current[0] if current and current[1] > now else None


def record_run(
    engine: Engine,
    lease: str,
    holder: str,
    entry: str,
    last_run_at: datetime,
    total_run_count: int,
    now: datetime | None = None,
    task_id: str | None = None,
) -> bool:
    """Record that ``entry`` ran at ``last_run_at``, only while ``holder`` holds ``lease``;
    False (nothing written) if it does not, and then it must not send. With a ``task_id``, the
    tick is also recorded as not yet sent, until :func:`sent`. ``last_run_at`` is on the
    database's clock (see :func:`clock_offset`)."""
    with write_transaction(engine) as connection:
        current = _current(connection, lease)
        now = now or database_now(connection)
        if current is None or current[0] != holder or current[1] <= now:
            return False
        _put(
            connection,
            beat_entries,
            name=entry,
            last_run_at=last_run_at,
            total_run_count=total_run_count,
        )
        if task_id is not None:
            _put(connection, beat_sends, entry=entry, task_id=task_id, recorded_at=now)
        return True


def sent(engine: Engine, entry: str, task_id: str) -> None:
    """The tick ``task_id`` of ``entry`` is with the broker: no takeover sends it again."""
    with write_transaction(engine) as connection:
        connection.execute(
            delete(beat_sends).where(beat_sends.c.entry == entry, beat_sends.c.task_id == task_id)
        )


def unsent(engine: Engine) -> dict[str, tuple[str, datetime]]:
    """Each entry's recorded tick whose send was never confirmed: (task id, recorded at)."""
    with read_transaction(engine) as connection:
        rows = connection.execute(
            select(beat_sends.c.entry, beat_sends.c.task_id, beat_sends.c.recorded_at)
        )
        return {entry: (task_id, recorded_at) for entry, task_id, recorded_at in rows}


def recorded_runs(engine: Engine) -> dict[str, tuple[datetime, int]]:
    """Each entry's last run (naive UTC) and run count, as the beats recorded them."""
    with read_transaction(engine) as connection:
        rows = connection.execute(
            select(beat_entries.c.name, beat_entries.c.last_run_at, beat_entries.c.total_run_count)
        )
        return {name: (last_run_at, count) for name, last_run_at, count in rows}


def _put(connection: Connection, table: Table, **values: object) -> None:
    """Insert the row, or update the one with its primary key (the first value given)."""
    key = next(iter(values))
    statement = dialect_insert(connection.dialect.name, table).values(**values)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c[key]], set_={k: v for k, v in values.items() if k != key}
        )
    )


def _current(connection: Connection, name: str, lock: bool = True) -> tuple[str, datetime] | None:
    query = select(beat_leases.c.holder, beat_leases.c.expires_at).where(beat_leases.c.name == name)
    row = connection.execute(query.with_for_update() if lock else query).first()
    return (row[0], row[1]) if row else None
