"""Run two ledger operations in a chosen order: the first is held with its transaction open
just before COMMIT, the second is started and seen blocked on the first's lock, then the
first is let go. No sleeps decide the order; the database's own lock state does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event, text

TIMEOUT = 30.0


class Interleaving:
    """``first`` commits only after ``second`` is blocked on ``first``'s locks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._holding: set[int] = set()
        self._second: set[int] = set()
        self._second_waits = threading.Event()
        self._first_at_commit = threading.Event()
        self._release = threading.Event()
        self.results: dict[str, Any] = {}

    def run(self, first: Callable[[], Any], second: Callable[[], Any]) -> dict[str, Any]:
        event.listen(self.engine, "commit", self._hold_first)
        event.listen(self.engine, "before_cursor_execute", self._see_second_begin)
        try:
            one = self._thread("first", first, self._holding)
            assert self._first_at_commit.wait(TIMEOUT), "the first never reached its commit"
            two = self._thread("second", second, self._second)
            self._wait_until_second_is_blocked(two)
            assert two.is_alive(), "the second finished while the first held its lock"
            self._release.set()
            one.join(TIMEOUT)
            two.join(TIMEOUT)
            assert not one.is_alive() and not two.is_alive()
        finally:
            self._release.set()
            event.remove(self.engine, "commit", self._hold_first)
            event.remove(self.engine, "before_cursor_execute", self._see_second_begin)
        for name in ("first", "second"):
            if isinstance(self.results.get(name), BaseException):
                raise self.results[name]
        return self.results

    def _thread(self, name: str, work: Callable[[], Any], group: set[int]) -> threading.Thread:
        def target() -> None:
            group.add(threading.get_ident())
            try:
                self.results[name] = work()
            except BaseException as exc:
                self.results[name] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    def _hold_first(self, connection: Any) -> None:
        writes = connection.get_execution_options().get("batchapp_write", False)
        if writes and threading.get_ident() in self._holding and not self._release.is_set():
            self._first_at_commit.set()
            self._release.wait(TIMEOUT)

    def _see_second_begin(self, connection: Any, cursor: Any, statement: str, *_: Any) -> None:
        # On SQLite a writer that issues BEGIN IMMEDIATE while another holds the write lock
        # waits in SQLite's busy handler until that one commits.
        if threading.get_ident() in self._second and statement == "BEGIN IMMEDIATE":
            self._second_waits.set()

    def _wait_until_second_is_blocked(self, second: threading.Thread) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not self._second_is_blocked():
            assert second.is_alive(), f"the second finished first: {self.results.get('second')}"
            assert time.monotonic() < deadline, "the second never waited for the first"
            time.sleep(0.005)

    def _second_is_blocked(self) -> bool:
        if self.engine.dialect.name == "sqlite":
            return self._second_waits.is_set()
        with self.engine.connect() as connection:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        return bool(waiting)
