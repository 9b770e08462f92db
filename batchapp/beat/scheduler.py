"""Beat's scheduler: any number of ``celery -A batchapp beat`` may run against one deployment.

The beat holding the lease in the batchapp database (see :mod:`batchapp.beat.leases`) sends the
ticks; the others stand by and the first to see the lease expire takes over, within one beat
interval. Each entry's last run lives in the database, recorded before its tick is sent, so a
beat that takes over sends neither a tick the last leader sent nor one it missed. Set as
``beat_scheduler``.

Besides the entries in code, the leader sends the entries operators store in the database
(:mod:`batchapp.beat.stored`): at each lease renewal (a quarter lease) it reads their change
counter and, when it moved, rereads them, so an added, paused, resumed or removed entry takes
effect within one beat interval. Their last runs are recorded under the lease like any other.

A beat runs on the database's clock, not its host's: at each renewal it measures how far the one
is from the other (:func:`leases.clock_offset`), and Celery's scheduling inside :meth:`tick` reads
its host's clock shifted by that. So beats on skewed hosts agree on when an entry is due, and a
tick's ``expires`` is one period after it was due on the database's clock (its message TTL, which
RabbitMQ counts, is the period itself).
"""

from __future__ import annotations

import copy
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.beat import Scheduler
from celery.utils.log import get_logger
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from batchapp.beat import leases, stored
from batchapp.beat.entries import code_entries, stored_entry
from batchapp.beat.timing import ScheduleError, checked
from batchapp.celery import settings
from batchapp.internals.clock import app_clock
from batchapp.jobs import JOBS
from batchapp.jobs.base import utcnow
from batchapp.runtime import job_context
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema

LEASE = "beat"
logger = get_logger(__name__)


class LeaseLost(RuntimeError):
    """Another beat holds the lease now: this one must not send."""


def lease_seconds(beat_interval_s: float) -> float:
    """Half an interval (1 to 30 s): a standby polling every quarter lease takes over within
    one interval of the leader's death."""
    return min(max(beat_interval_s / 2, 1.0), 30.0)


class LeaderScheduler(Scheduler):  # type: ignore[misc]
    """Celery's scheduler, sending only while this process holds the beat lease."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.lease = timedelta(seconds=lease_seconds(settings.beat_interval))
        self.poll_s = self.lease.total_seconds() / 4
        self.leading = False
        self._renew_at = 0.0
        # The database's clock minus this host's, measured at each lease renewal.
        self._offset = timedelta(0)
        self._standby_logged = False
        self._in_database = False
        self._code_names: set[str] = set()
        self._stored_names: set[str] = set()
        self._stored_version: int | None = None
        # Entry name -> the task id its recorded tick is sent with (reserve, then apply_async).
        self._tick_ids: dict[str, str] = {}
        super().__init__(app, *args, **kwargs)

    @contextmanager
    def database(self) -> Iterator[Engine]:
        """The lease database, marked in use while a call runs (see :meth:`close`)."""
        self._in_database = True
        try:
            engine = engine_for(settings.database_url)
            ensure_schema(engine)
            yield engine
        finally:
            self._in_database = False

    def setup_schedule(self) -> None:
        # No celery.backend_cleanup: the cleanup job expires results, and workers refuse it.
        try:
            code = code_entries(self.app.conf.beat_schedule, JOBS, job_context())
        except ScheduleError as exc:
            # Beat would show a traceback from inside its start-up; this line says it all.
            raise SystemExit(f"batchapp: {exc}") from None
        self.merge_inplace(code)
        self._code_names = set(code)
        for entry in self.schedule.values():
            # A send whose confirm never comes fails after this instead of stopping beat.
            entry.options.setdefault("confirm_timeout", settings.broker_timeout)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        with app_clock(self.app, self._celery_now):
            return self._tick(*args, **kwargs)

    def _tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.leading or time.monotonic() >= self._renew_at:
            self._check_lease()
            if self.leading:
                self._pick_up_changes()
        if not self.leading:
            return self.poll_s
        try:
            delay = float(super().tick(*args, **kwargs))
        except LeaseLost:
            self._stand_down("the lease expired before a tick was recorded")
            return self.poll_s
        return min(delay, max(self._renew_at - time.monotonic(), 0.0))

    def reserve(self, entry: Any) -> Any:
        new_entry = next(entry)
        last_run_at = new_entry.last_run_at.astimezone(UTC).replace(tzinfo=None)
        tick_id = str(uuid.uuid4())
        with self.database() as engine:
            recorded = leases.record_run(
                engine,
                LEASE,
                self.holder,
                entry.name,
                last_run_at,
                new_entry.total_run_count,
                task_id=tick_id,
            )
        if not recorded:
            raise LeaseLost(entry.name)
        self._tick_ids[entry.name] = tick_id
        self.schedule[entry.name] = new_entry
        return new_entry

    def apply_async(self, entry: Any, *args: Any, **kwargs: Any) -> Any:
        tick_id = self._tick_ids.pop(entry.name, None)
        if tick_id is None:
            return super().apply_async(entry, *args, **kwargs)
        return self._send(entry, tick_id, producer=kwargs.get("producer"))

    def database_now(self) -> datetime:
        """The database's clock (naive UTC), from this host's and the last offset measured."""
        return utcnow() + self._offset

    def _celery_now(self) -> datetime:
        """The database's clock as Celery's ``app.now()`` gives time: aware, in its timezone."""
        return self.database_now().replace(tzinfo=UTC).astimezone(self.app.timezone)

    def _send(
        self,
        entry: Any,
        tick_id: str,
        again: bool = False,
        producer: Any = None,
        expires: float | None = None,
    ) -> Any:
        """Send ``entry``'s recorded tick as task ``tick_id`` (expiring after ``expires`` s
        rather than the entry's own); once the broker confirmed it, it is no longer recorded
        as unsent."""
        sending = copy.copy(entry)
        sending.options = {**entry.options, "task_id": tick_id}
        if expires is not None:
            sending.options["expires"] = expires
        result = super().apply_async(sending, producer=producer or self.producer, advance=False)
        logger.info(
            "beat: sent %s%s (%s) as %s",
            "again " if again else "",
            entry.name,
            entry.task,
            result.id,
        )
        try:
            with self.database() as engine:
                leases.sent(engine, entry.name, tick_id)
        except SQLAlchemyError as exc:
            # A beat taking over would send it again under the same id: it still runs once.
            logger.warning("beat: cannot record %s as sent: %s", entry.name, exc)
        return result

    def close(self) -> None:
        super().close()
        # Beat's SIGTERM handler runs close() on top of whatever beat was doing. Stopped inside a
        # lease call, that call's transaction still holds the database: a release would wait on
        # its own process until it is killed, and every other writer with it. The lease expires
        # by itself within half an interval instead.
        if self.leading and not self._in_database:
            with self.database() as engine:
                leases.release(engine, LEASE, self.holder)
            self.leading = False

    @property
    def info(self) -> str:
        return f"leader by lease in the batchapp database ({self.lease.total_seconds():g} s)"

    def _check_lease(self) -> None:
        try:
            with self.database() as engine:
                self._offset = leases.clock_offset(engine)
                held = leases.acquire(engine, LEASE, self.holder, self.lease)
        except SQLAlchemyError as exc:
            # Without the database there is no knowing who leads: sending could double a tick.
            logger.error("beat: cannot reach the batchapp database for the lease: %s", exc)
            held = False
        if held:
            self._renew_at = time.monotonic() + self.poll_s
            if not self.leading:
                self._take_over()
        elif self.leading:
            self._stand_down("another beat holds the lease")
        elif not self._standby_logged:
            self._standby_logged = True
            with self.database() as engine:
                holder = leases.holder_of(engine, LEASE)
            logger.info("beat: standing by; %s holds the lease", holder)

    def _take_over(self) -> None:
        with self.database() as engine:
            runs = leases.recorded_runs(engine)
            self._load_stored(engine, runs)
        for name in self._code_names:
            if name in runs:
                entry = self.schedule[name]
                last_run_at, count = runs[name]
                entry.last_run_at = last_run_at.replace(tzinfo=UTC)
                entry.total_run_count = count
        # The next sends are computed from the last runs just loaded.
        self.populate_heap()
        self._send_unsent()
        self.leading = True
        self._standby_logged = False
        logger.info(
            "beat: leading as %s (lease %g s); %d entries' last runs loaded",
            self.holder,
            self.lease.total_seconds(),
            len(runs),
        )

    def _send_unsent(self) -> None:
        """Send the ticks the last leader recorded but was stopped before sending, under their
        recorded task ids: a tick it did send arrives twice, and its run happens once (the job
        key ``tick:ID``; see ``tasks.run_periodic``). A tick past its expiry is dropped."""
        with self.database() as engine:
            unsent = leases.unsent(engine)
        now = self.database_now()
        for name, (tick_id, recorded_at) in sorted(unsent.items()):
            entry = self.schedule.get(name)
            expires = entry.options.get("expires") if entry is not None else 0
            left = None if expires is None else expires - (now - recorded_at).total_seconds()
            if entry is None or (left is not None and left <= 0):
                with self.database() as engine:
                    leases.sent(engine, name, tick_id)  # removed, or it would expire on arrival
                continue
            try:
                self._send(entry, tick_id, again=True, expires=left)
            except Exception as exc:  # as Celery's apply_entry does: log it and go on
                logger.error("beat: cannot send %s again: %s", name, exc)

    def _pick_up_changes(self) -> None:
        """Reread the stored entries if their change counter moved since the last read."""
        try:
            with self.database() as engine:
                if stored.version(engine) == self._stored_version:
                    return
                self._load_stored(engine, leases.recorded_runs(engine))
        except SQLAlchemyError as exc:
            # The entries already loaded keep running; the next renewal tries again.
            logger.error("beat: cannot read the stored schedule: %s", exc)
            return
        self.populate_heap()
        logger.info("beat: stored schedule reloaded: %s", ", ".join(sorted(self._stored_names)))

    def _load_stored(self, engine: Engine, runs: dict[str, tuple[datetime, int]]) -> None:
        """The stored entries that are not paused, each from its last run (or from when it was
        added or resumed, if later), in place of those loaded before."""
        version = stored.version(engine)  # first: a change made meanwhile is seen next time
        rows = stored.entries(engine)
        for name in self._stored_names:
            self.schedule.pop(name, None)
        self._stored_names = set()
        for row in rows:
            if row.paused:
                continue
            if row.name in self._code_names:
                logger.warning(
                    "beat: stored entry %s skipped: an entry in code has its name", row.name
                )
                continue
            try:
                checked(row.schedule)
            except ScheduleError as exc:
                logger.error("beat: stored entry %s skipped: %s", row.name, exc)
                continue
            last_run_at, count = runs.get(row.name, (row.since, 0))
            entry = self.Entry(
                **stored_entry(row),
                name=row.name,
                app=self.app,
                last_run_at=max(last_run_at, row.since).replace(tzinfo=UTC),
                total_run_count=count,
            )
            entry.options.setdefault("confirm_timeout", settings.broker_timeout)
            self.schedule[row.name] = entry
            self._stored_names.add(row.name)
        self._stored_version = version

    def _stand_down(self, reason: str) -> None:
        self.leading = False
        logger.warning("beat: standing down: %s", reason)
