"""When a scheduled job runs: every N seconds, or on a cron expression in BATCHAPP_TIMEZONE.

    @job("acme.nightly", schedule=cron("0 3 * * *"), schedule_params={"n": 1000})

:func:`every` and :func:`cron` check their input at once; a mistake is a
:class:`ScheduleError` of one line naming it. Neither loads Celery's app: beat turns them into
Celery schedules (:meth:`Every.celery`, :meth:`Cron.celery`), which take the app's timezone.
Celery's ``crontab`` is imported on first use, so a job module that declares no cron schedule
loads nothing of Celery (``import batchapp`` stays light).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery.schedules import crontab

# At least a second: beat's own precision; at most ten years, as for every other duration.
MIN_EVERY_S = 1.0
MAX_EVERY_S = 10 * 365 * 86400.0
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
# A cron tick no worker took within this is dropped (the lock keeps runs apart anyway).
CRON_EXPIRES_S = 3000.0


class ScheduleError(ValueError):
    """A schedule that cannot run: a bad cron expression or interval; one line."""


@dataclass(frozen=True)
class Every:
    """Every ``seconds`` seconds, counted from the last run."""

    seconds: float

    def celery(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    @property
    def expires_s(self) -> float:
        return self.seconds

    def __str__(self) -> str:
        return f"every {self.seconds:g} s"


@dataclass(frozen=True)
class Cron:
    """A cron expression ``M H DOM MON DOW`` (minute, hour, day of month, month, day of week)."""

    expression: str

    def celery(self) -> crontab:
        from celery.schedules import crontab

        return crontab(**dict(zip(CRON_FIELDS, self.expression.split(), strict=True)))

    @property
    def expires_s(self) -> float:
        return CRON_EXPIRES_S

    def __str__(self) -> str:
        return f"cron {self.expression}"


Schedule = Every | Cron


def every(seconds: Any) -> Every:
    """Every ``seconds`` (a number, or its text from the CLI), at least 1 s."""
    try:
        value = float(seconds.strip() if isinstance(seconds, str) else seconds)
    except (TypeError, ValueError):
        raise ScheduleError(f"every: expected a number of seconds, got {seconds!r}") from None
    if isinstance(seconds, bool) or not math.isfinite(value):
        raise ScheduleError(f"every: expected a number of seconds, got {seconds!r}")
    if not MIN_EVERY_S <= value <= MAX_EVERY_S:
        raise ScheduleError(
            f"every: seconds must be between {MIN_EVERY_S:g} and {MAX_EVERY_S:.0f}, got {value:g}"
        )
    return Every(value)


def cron(expression: Any) -> Cron:
    """A cron expression of five fields, each checked by Celery's ``crontab``."""
    if not isinstance(expression, str):
        raise ScheduleError(f"cron: expected text like '0 3 * * *', got {expression!r}")
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        raise ScheduleError(
            f"cron: expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {expression!r}"
        )
    from celery.schedules import crontab

    for name, value in zip(CRON_FIELDS, fields, strict=True):
        try:
            crontab(**{name: value})
        except Exception as exc:  # crontab raises ValueError, and others on odd steps
            raise ScheduleError(f"cron {expression!r}: bad {name} {value!r} ({exc})") from None
    normalized = Cron(" ".join(fields))
    try:
        normalized.celery()  # the fields together: 31 in February never occurs
    except Exception as exc:
        raise ScheduleError(f"cron {expression!r}: {exc}") from None
    return normalized


def checked(schedule: Schedule) -> Schedule:
    """``schedule`` checked again, as :func:`every` or :func:`cron` checks (a stored row may have
    been edited by hand)."""
    return every(schedule.seconds) if isinstance(schedule, Every) else cron(schedule.expression)


def check_schedule(schedule: Any, params: Any, where: str) -> None:
    """A TypeError naming ``where`` unless ``schedule`` is a schedule (or None) and ``params`` a
    mapping of parameter names."""
    if schedule is not None and not isinstance(schedule, Every | Cron):
        raise TypeError(
            f"{where}: schedule must be every(SECONDS) or cron('M H DOM MON DOW'), got {schedule!r}"
        )
    if not isinstance(params, Mapping) or not all(isinstance(key, str) for key in params):
        raise TypeError(f"{where}: schedule_params must be a dict of parameters, got {params!r}")
