"""What the worker does with each task message before Celery sees it, as plain functions.

Every task message is checked by :mod:`batchapp.broker.guard`: a malformed one is logged in one
line with the guard's reason and rejected with ``requeue=False``, and RabbitMQ dead-letters it
into ``batchapp.dead`` (routing.py). The reject is one frame with no reply: the worker's main
loop neither publishes nor waits on a bad message, so a flood of them does not hold up the good
ones behind it. The worker serves on.

A reject still holds its prefetch slot until RabbitMQ settles it (a quorum queue commits it
first), and the calls consumer has two slots: alone, that drained about 1,000 bad messages a
second, fewer than one publisher sends, and a call behind a flood waited seconds. So while bad
messages arrive fast (:class:`Surge`), the worker consumes the calls queue with a wider
prefetch (:data:`SURGE_PREFETCH`) and narrows it again once they stop. A NotRegistered result
for an unknown task name is written by a thread of its own (:class:`Recorder`), never by the
loop that rejects.

Celery calls none of this by itself: :mod:`batchapp.internals.consumer` wires
:func:`on_task_message` into Celery's consumer (``worker_consumer``) through Celery's private
hooks, which all live there.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from celery.exceptions import NotRegistered
from celery.utils.log import get_logger

from batchapp.broker import guard
from batchapp.broker.queues import CALLS, DEAD
from batchapp.storage.results import rejection_id

logger = get_logger(__name__)

# Bad messages within SURGE_WINDOW_S that start a surge, the calls consumer's prefetch while it
# lasts, and how long without a bad message ends it. A wider prefetch lets the worker hold that
# many calls unstarted, taken from other workers: only while a flood lasts.
SURGE_BAD = 20
SURGE_WINDOW_S = 1.0
SURGE_PREFETCH = 128
SURGE_CALM_S = 1.0
# The queue whose prefetch widens: the one callers wait on, where a flood hurts.
SURGE_QUEUE = CALLS
# NotRegistered results waiting for the recorder's thread; past this they are dropped (the
# message is dead-lettered all the same, its caller times out instead of failing at once).
RECORDER_BACKLOG = 1000


class Surge:
    """Whether bad messages arrive fast enough to widen the calls consumer's prefetch."""

    def __init__(
        self, bad: int = SURGE_BAD, window_s: float = SURGE_WINDOW_S, calm_s: float = SURGE_CALM_S
    ) -> None:
        self.window_s, self.calm_s = window_s, calm_s
        self.recent: deque[float] = deque(maxlen=bad)
        self.wide = False

    def bad(self, now: float) -> bool:
        """Note a bad message at ``now``; True when it starts a surge."""
        self.recent.append(now)
        full = len(self.recent) == self.recent.maxlen
        if not self.wide and full and now - self.recent[0] <= self.window_s:
            self.wide = True
            return True
        return False

    def calm(self, now: float) -> bool:
        """True once, when a surge is over: no bad message for ``calm_s``."""
        if self.wide and now - self.recent[-1] >= self.calm_s:
            self.wide = False
            self.recent.clear()
            return True
        return False


def served_tasks(task_names: Iterable[str]) -> frozenset[str]:
    """The task names a worker runs: batchapp's own, never Celery's built-in ones."""
    return frozenset(name for name in task_names if name.startswith("batchapp."))


def on_task_message(
    handle: Callable[[Any], None],
    served: frozenset[str],
    app: Any,
    connection_errors: tuple[type[BaseException], ...],
    message: Any,
    on_reject: Callable[[], None] = lambda: None,
    recorder: Recorder | None = None,
) -> None:
    """Give ``message`` to Celery's ``handle`` if the guard finds nothing wrong with it, else
    reject it into the dead-letter queue; nothing a message holds stops the worker."""
    reason = problem(message, served)
    if reason is None:
        try:
            handle(message)
            return
        except connection_errors:
            raise
        except Exception as exc:
            # What the guard let through must still never stop the worker.
            if message.acknowledged:
                logger.exception("Error handling task message after it was acknowledged")
                return
            reason = f"the worker could not accept it: {type(exc).__name__}: {exc}"
    reject(message, reason, connection_errors)
    on_reject()
    _fail_unknown_task(app, message.headers, served, recorder)


def problem(message: Any, served: frozenset[str]) -> str | None:
    """The guard's one-line reason to refuse ``message``, or None."""
    try:
        return guard.problem(
            message.headers, message.content_type, message.content_encoding, message.body, served
        )
    except Exception as exc:  # a gap in the guard must not stop the worker either
        return f"the check failed on it: {type(exc).__name__}: {exc}"


def reject(message: Any, reason: str, connection_errors: tuple[type[BaseException], ...]) -> None:
    """Log ``reason`` in one line and reject ``message`` without requeueing it: RabbitMQ moves
    it to the dead-letter queue (a requeued one would come straight back)."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    queue = (message.delivery_info or {}).get("routing_key")
    logger.warning(
        "Rejected message (task %.100r, id %.100r) from queue %r into %s: %s",
        headers.get("task"),
        headers.get("id"),
        queue,
        DEAD,
        reason[:300],
    )
    message.reject_log_error(logger, connection_errors, requeue=False)


def _fail_unknown_task(
    app: Any, headers: Any, served: frozenset[str], recorder: Recorder | None = None
) -> None:
    """A caller waiting on a task nobody serves gets NotRegistered at once, as with Celery.

    It is recorded under an id of the refusal's own (``rejection_id``), read only by the caller
    that sent that task name under that id: written under the message's id, it would fail any
    caller whose id a publisher copied into a message naming an unknown task."""
    task, task_id = (
        (headers.get("task"), headers.get("id")) if isinstance(headers, dict) else (0, 0)
    )
    if not isinstance(task, str) or task in served:
        return
    if not isinstance(task_id, str) or not 0 < len(task_id) <= guard.MAX_ID_CHARS:
        return
    if not getattr(app.backend, "reads_rejections", False):
        return  # no caller of this backend would read it
    if recorder is None:
        record_not_registered(app, task_id, task)
    else:
        recorder.put(task_id, task)


def record_not_registered(app: Any, task_id: str, task: str) -> None:
    try:
        app.backend.mark_as_failure(rejection_id(task_id, task), NotRegistered(task[:200]))
    except Exception as exc:
        logger.error("Cannot record NotRegistered for task %.100r: %s", task_id, exc)


class Recorder:
    """Writes NotRegistered results from a thread of its own, so a flood of unknown task names
    costs the worker's loop a queue put each, not a database write; at most ``backlog`` wait."""

    def __init__(self, app: Any, backlog: int = RECORDER_BACKLOG) -> None:
        self.app = app
        self.waiting: queue.Queue[tuple[str, str]] = queue.Queue(backlog)
        self.dropped = 0
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def put(self, task_id: str, task: str) -> None:
        self._start()
        try:
            self.waiting.put_nowait((task_id, task))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "%d NotRegistered results not recorded: more than %d waiting",
                    self.dropped,
                    self.waiting.maxsize,
                )

    def _start(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, name="batchapp-not-registered", daemon=True
                )
                self.thread.start()

    def _run(self) -> None:
        while True:
            task_id, task = self.waiting.get()
            record_not_registered(self.app, task_id, task)
            self.waiting.task_done()
