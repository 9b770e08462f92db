"""Schedule entries operators keep in the batchapp database (``batchapp schedule add``).

Every change bumps one counter (``batch_schedule_changes``) in its own transaction, so the
leading beat reads one row per lease renewal and rereads the entries only when it moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from batchapp.beat.timing import Cron, Every, Schedule
from batchapp.storage.engines import (
    database_now,
    dialect_insert,
    read_transaction,
    write_transaction,
)
from batchapp.storage.tables import (
    SCHEDULE_NAME_MAX_CHARS,
    beat_entries,
    ensure_schema,
    schedule_changes,
    schedules,
)
from batchapp.validate import shown

MARKER = "schedules"


class ScheduleNameError(ValueError):
    """A schedule name that is malformed, taken, or unknown; one line."""


@dataclass(frozen=True)
class StoredEntry:
    """One stored entry: run ``job`` with ``params`` on ``schedule`` unless paused."""

    name: str
    job: str
    params: dict[str, Any]
    schedule: Schedule
    paused: bool
    # Added or last resumed at (naive UTC): the first run is due one period after it.
    since: datetime


def check_name(name: str) -> str:
    """``name`` if it can name an entry: printable, no blanks, at most 200 characters."""
    if not name or len(name) > SCHEDULE_NAME_MAX_CHARS:
        raise ScheduleNameError(
            f"a schedule name must have 1 to {SCHEDULE_NAME_MAX_CHARS} characters, "
            f"got {shown(name)}"
        )
    if not name.isprintable() or any(c.isspace() for c in name):
        raise ScheduleNameError(f"a schedule name must be printable, without blanks: {shown(name)}")
    return name


def add(
    engine: Engine,
    name: str,
    job: str,
    params: dict[str, Any],
    schedule: Schedule,
    now: datetime | None = None,
) -> StoredEntry:
    """Store a new entry; a :class:`ScheduleNameError` if one has that name already."""
    check_name(name)
    every_s = schedule.seconds if isinstance(schedule, Every) else None
    cron = schedule.expression if isinstance(schedule, Cron) else None
    ensure_schema(engine)
    try:
        with write_transaction(engine) as connection:
            if _row(connection, name) is not None:
                raise ScheduleNameError(f"a schedule named {name!r} exists already")
            now = now or database_now(connection)  # beats compare it with their last runs
            connection.execute(
                insert(schedules).values(
                    name=name,
                    job=job,
                    params=params,
                    every_s=every_s,
                    cron=cron,
                    paused=False,
                    since=now,
                    created_at=now,
                )
            )
            _bump(connection)
    except IntegrityError:
        # Another add of the name committed between our read and our insert.
        raise ScheduleNameError(f"a schedule named {name!r} exists already") from None
    return StoredEntry(name, job, params, schedule, False, now)


def set_paused(engine: Engine, name: str, paused: bool, now: datetime | None = None) -> StoredEntry:
    """Pause or resume entry ``name``; resuming starts its period again from ``now``."""
    ensure_schema(engine)
    with write_transaction(engine) as connection:
        found = _row(connection, name)
        if found is None:
            raise _unknown(name)
        entry = _entry(found)
        if entry.paused == paused:
            return entry
        since = (now or database_now(connection)) if not paused else entry.since
        connection.execute(
            update(schedules).where(schedules.c.name == name).values(paused=paused, since=since)
        )
        _bump(connection)
    return StoredEntry(entry.name, entry.job, entry.params, entry.schedule, paused, since)


def remove(engine: Engine, name: str) -> None:
    """Delete entry ``name`` and its last run, so a new entry of that name starts afresh."""
    ensure_schema(engine)
    with write_transaction(engine) as connection:
        removed = connection.execute(delete(schedules).where(schedules.c.name == name)).rowcount
        if not removed:
            raise _unknown(name)
        connection.execute(delete(beat_entries).where(beat_entries.c.name == name))
        _bump(connection)


def entries(engine: Engine) -> list[StoredEntry]:
    """Every stored entry, paused or not, by name."""
    ensure_schema(engine)
    with read_transaction(engine) as connection:
        rows = connection.execute(select(schedules).order_by(schedules.c.name)).all()
    return [_entry(row) for row in rows]


def version(engine: Engine) -> int:
    """The change counter: it moves with every add, pause, resume and remove."""
    ensure_schema(engine)
    with read_transaction(engine) as connection:
        found = connection.execute(
            select(schedule_changes.c.version).where(schedule_changes.c.name == MARKER)
        ).scalar()
    return int(found or 0)


def _bump(connection: Connection) -> None:
    upsert = dialect_insert(connection.dialect.name, schedule_changes).values(
        name=MARKER, version=1
    )
    connection.execute(
        upsert.on_conflict_do_update(
            index_elements=[schedule_changes.c.name],
            set_={"version": schedule_changes.c.version + 1},
        )
    )


def _row(connection: Connection, name: str) -> Any:
    return connection.execute(
        select(schedules).where(schedules.c.name == name).with_for_update()
    ).first()


def _entry(row: Any) -> StoredEntry:
    schedule: Schedule = Every(row.every_s) if row.every_s is not None else Cron(row.cron)
    return StoredEntry(row.name, row.job, dict(row.params), schedule, bool(row.paused), row.since)


def _unknown(name: str) -> ScheduleNameError:
    return ScheduleNameError(f"no stored schedule named {name!r} (see batchapp schedule)")
