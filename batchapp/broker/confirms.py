"""Publisher confirms that a burst of ``delay()`` calls does not wait for one by one.

Waiting for each confirm costs a broker round trip per call (RabbitMQ confirms once the
message is safe). Here a caller's publishes go out on one channel in confirm mode without a
wait, and the confirms are read as they come: on every later publish (without blocking), when
the window of unconfirmed messages is full, when the caller touches a result whose confirm is
still out, and at process exit. Nothing is lost silently:

- a nack, or a connection or channel that dies with confirms still out, sends those tasks
  again through Celery's own publish (confirmed one by one, with its retries), as Celery's
  retry would have; a task that cannot be sent even so is an error raised on the caller's
  next publish and on every touch of its result;
- a confirm that does not come within the broker timeout is a :class:`ConfirmTimeout` for
  its tasks (they may or may not be queued, so they are not sent twice);
- at exit every confirm still out is awaited, and a task that failed is written to stderr.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from amqp.exceptions import AMQPError
from kombu.exceptions import OperationalError as KombuOperationalError

from batchapp.internals.channel import unwaited_confirm_channel

WINDOW = 1000
"""Unconfirmed messages one process may have out before a publish waits for confirms."""

# What ends the window's connection or channel: its unconfirmed messages are sent again.
LOST = (KombuOperationalError, AMQPError, OSError)

Resend = Callable[[], Any]


class ConfirmTimeout(TimeoutError):
    """RabbitMQ did not confirm a task in time; it may or may not be queued."""


class ConfirmWindow:
    """One process's unconfirmed publishes on one connection, settled as confirms arrive."""

    def __init__(self, app: Any, timeout: float, size: int = WINDOW) -> None:
        self._app = app
        self._timeout = timeout
        self._size = size
        self._lock = threading.RLock()
        self._connection: Any = None
        self._producer: Any = None
        self._sent = 0  # the delivery tag of the channel's last publish
        # delivery tag -> (task id, how to send it again); ordered by tag.
        self._pending: dict[int, tuple[str, Resend]] = {}
        self._tags_of: dict[str, list[int]] = {}  # task id -> its publishes' pending tags
        self._failed: dict[str, BaseException] = {}  # by task id, kept for its result
        self._unreported: list[str] = []  # failed task ids no publish has raised yet

    def publish(self, task_id: str, send: Callable[[Any], Any], resend: Resend) -> Any:
        """``send(producer)`` without waiting for its confirm; ``resend()`` sends the task
        again (confirmed) if RabbitMQ refuses it or the connection ends before confirming."""
        with self._lock:
            try:
                if self._connection is not None:
                    self._read(block_until=None)
                    while len(self._pending) >= self._size:
                        self._read(block_until=next(iter(self._pending)))
            except LOST as exc:
                self._lost(exc)
            # A task refused earlier is raised before this one is sent: this one is not sent.
            self._raise_unreported()
            try:
                producer = self._open()
                first = self._sent + 1
                result = send(producer)
                for tag in range(first, self._sent + 1):
                    self._pending[tag] = (task_id, resend)
                    self._tags_of.setdefault(task_id, []).append(tag)
            except LOST as exc:
                self._lost(exc)
                self._raise_unreported()
                return resend()
            return result

    def settle(self, task_id: str) -> None:
        """Return once ``task_id`` is confirmed (at once if it is not out); raise if it was
        refused or lost and could not be sent again."""
        with self._lock:
            # Looked up, not searched: a burst's results are read with up to WINDOW pending.
            try:
                # RabbitMQ may confirm a task-sent event before the task's own message.
                while tags := self._tags_of.get(task_id):
                    self._read(block_until=tags[-1])
            except LOST as exc:
                self._lost(exc)
            failure = self._failed.get(task_id)
            if failure is not None:
                if task_id in self._unreported:
                    self._unreported.remove(task_id)
                raise failure

    def flush(self) -> list[str]:
        """Wait for every confirm still out; lines naming each task that failed."""
        with self._lock:
            if self._pending:
                try:
                    self._read(block_until=max(self._pending))
                except LOST as exc:
                    self._lost(exc)
            lines = [
                f"task {task_id} was not queued: {self._failed[task_id]}"
                for task_id in self._unreported
            ]
            self._unreported.clear()
            return lines

    def pending(self) -> int:
        return len(self._pending)

    def _open(self) -> Any:
        if self._producer is None:
            # Kept at once, so a failure below still closes it (in _lost).
            connection = self._connection = self._app.connection_for_write()
            connection.ensure_connection(max_retries=3, timeout=self._timeout)
            channel = unwaited_confirm_channel(
                connection, self._count_sent, self._on_ack, self._on_nack
            )
            self._sent = 0
            self._producer = self._app.amqp.Producer(channel)
        return self._producer

    def _count_sent(self) -> None:
        self._sent += 1

    def _read(self, block_until: int | None) -> None:
        """Handle the confirms that have arrived; with a tag, wait until it is settled."""
        if block_until is None:
            try:
                while True:
                    self._connection.drain_events(timeout=0)
            except TimeoutError:
                return
        deadline = time.monotonic() + self._timeout
        while block_until in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._time_out()
                return
            try:
                self._connection.drain_events(timeout=remaining)
            except TimeoutError:
                continue

    def _settled(self, delivery_tag: int, multiple: bool) -> list[tuple[str, Resend]]:
        tags = [tag for tag in self._pending if tag <= delivery_tag] if multiple else [delivery_tag]
        settled = []
        for tag in tags:
            if tag in self._pending:
                settled.append(entry := self._pending.pop(tag))
                tags_of_task = self._tags_of[entry[0]]
                tags_of_task.remove(tag)
                if not tags_of_task:
                    del self._tags_of[entry[0]]
        return settled

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settled(delivery_tag, multiple)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._send_again(self._settled(delivery_tag, multiple))

    def _lost(self, exc: BaseException) -> None:
        """The connection or channel ended: what it did not confirm is sent again."""
        lost = list(self._pending.values())
        self._pending.clear()
        self._tags_of.clear()
        self._close()
        self._send_again(lost)

    def _time_out(self) -> None:
        """Every confirm still out fails: the channel they were sent on is not trusted again."""
        error = ConfirmTimeout(
            f"RabbitMQ did not confirm it within {self._timeout:g} s (it may or may not be queued)"
        )
        for task_id, _ in dict(self._pending.values()).items():
            self._fail(task_id, error)
        self._pending.clear()
        self._tags_of.clear()
        self._close()

    def _send_again(self, entries: list[tuple[str, Resend]]) -> None:
        for task_id, resend in dict(entries).items():
            try:
                resend()
            except Exception as exc:
                self._fail(task_id, exc)

    def _fail(self, task_id: str, exc: BaseException) -> None:
        self._failed[task_id] = exc
        self._unreported.append(task_id)

    def _raise_unreported(self) -> None:
        if self._unreported:
            task_id = self._unreported.pop(0)
            raise KombuOperationalError(
                f"an earlier task {task_id} was not queued: {self._failed[task_id]} "
                "(this one was not sent)"
            ) from self._failed[task_id]

    def _close(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            connection.collect()


_windows: dict[int, ConfirmWindow] = {}  # by id(app)
_windows_lock = threading.Lock()


def _forget_inherited_windows() -> None:
    # A forked child makes its own window: the parent's connection and pending tags are not its,
    # and the lock may have been held by a parent's thread that the child does not have.
    global _windows_lock
    _windows.clear()
    _windows_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited_windows)


def window_for(app: Any, timeout: float) -> ConfirmWindow:
    """This process's window for ``app`` (a forked child makes its own)."""
    window = _windows.get(id(app))
    if window is None:
        with _windows_lock:
            window = _windows.setdefault(id(app), ConfirmWindow(app, timeout))
    return window


def pending_window(app: Any) -> ConfirmWindow | None:
    """This process's window for ``app`` if it has one."""
    return _windows.get(id(app))


@atexit.register
def _flush_at_exit() -> None:
    for window in list(_windows.values()):
        for line in window.flush():
            print(f"batchapp: {line}", file=sys.stderr)
