"""What beat runs, and when. Intervals come from BATCHAPP_BEAT_INTERVAL (60 s by default)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

CLEANUP_EXPIRES_S = 3000


def beat_schedule(interval_s: float) -> dict[str, dict[str, Any]]:
    """The beat entries; every one expires, so a tick no worker took in time is dropped."""
    every = timedelta(seconds=interval_s)
    return {
        "calculate-sum": {
            "task": "batchapp.tasks.calculate_sum",
            "schedule": every,
            "args": (100,),
            "options": {"expires": interval_s},
        },
        "sales-report": {
            "task": "batchapp.tasks.run_periodic",
            "schedule": every,
            "args": ("report",),
            "options": {"expires": interval_s},
        },
        # Finishes or restarts jobs that lost their messages (see ledger.reconcile).
        "reconcile": {
            "task": "batchapp.tasks.reconcile",
            "schedule": every,
            "options": {"expires": interval_s},
        },
        "cleanup": {
            "task": "batchapp.tasks.run_periodic",
            "schedule": crontab(minute="17"),
            "args": ("cleanup",),
            "options": {"expires": CLEANUP_EXPIRES_S},
        },
    }
