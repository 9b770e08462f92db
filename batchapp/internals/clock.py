"""A Celery app read on another clock for a while: beat on the database's clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any


@contextmanager
def app_clock(app: Any, now: Callable[[], datetime]) -> Iterator[None]:
    """Inside, ``app.now()`` is ``now()``: beat's due times, the runs it records, a tick's
    ``expires`` header and its message TTL (both from a number of seconds) all follow it."""
    # Undocumented: Celery's beat entries and schedules, and send_task's expiry, read the time
    # through app.now() alone (public, but not documented as the one clock they use); an
    # instance attribute shadows the method for the block.
    app.now = now
    try:
        yield
    finally:
        del app.now
