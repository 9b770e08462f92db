"""Beat's scheduler: any number of ``celery -A batchapp beat`` may run against one deployment.

The beat holding the lease in the batchapp database (see :mod:`batchapp.beat.leases`) sends the
ticks; the others stand by and the first to see the lease expire takes over, within one beat
interval. Each entry's last run lives in the database, recorded before its tick is sent, so a
beat that takes over sends neither a tick the last leader sent nor one it missed. Set as
``beat_scheduler``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, timedelta
from typing import Any

from celery.beat import Scheduler
from celery.utils.log import get_logger
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from batchapp.beat import leases
from batchapp.celery import settings
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
        self._standby_logged = False
        self._in_database = False
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
        self.merge_inplace(self.app.conf.beat_schedule)
        for entry in self.schedule.values():
            # A send whose confirm never comes fails after this instead of stopping beat.
            entry.options.setdefault("confirm_timeout", settings.broker_timeout)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.leading or time.monotonic() >= self._renew_at:
            self._check_lease()
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
        with self.database() as engine:
            recorded = leases.record_run(
                engine, LEASE, self.holder, entry.name, last_run_at, new_entry.total_run_count
            )
        if not recorded:
            raise LeaseLost(entry.name)
        self.schedule[entry.name] = new_entry
        return new_entry

    def apply_async(self, entry: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().apply_async(entry, *args, **kwargs)
        logger.info("beat: sent %s (%s) as %s", entry.name, entry.task, result.id)
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
        for name, entry in self.schedule.items():
            if name in runs:
                last_run_at, count = runs[name]
                entry.last_run_at = last_run_at.replace(tzinfo=UTC)
                entry.total_run_count = count
        # The next sends are computed from the last runs just loaded.
        self.populate_heap()
        self.leading = True
        self._standby_logged = False
        logger.info(
            "beat: leading as %s (lease %g s); %d entries' last runs loaded",
            self.holder,
            self.lease.total_seconds(),
            len(runs),
        )

    def _stand_down(self, reason: str) -> None:
        self.leading = False
        logger.warning("beat: standing down: %s", reason)
