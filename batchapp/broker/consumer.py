"""What the worker does with each task message before Celery sees it, as plain functions.

Every task message is checked by :mod:`batchapp.broker.guard`: a malformed one is logged in one
line with the guard's reason and rejected with ``requeue=False``, and RabbitMQ dead-letters it
into ``batchapp.dead`` (routing.py). The reject is one frame with no reply: the worker's main
loop neither publishes nor waits on a bad message, so a flood of them does not hold up the good
ones behind it. The worker serves on.

Celery calls none of this by itself: :mod:`batchapp.internals.consumer` wires
:func:`on_task_message` into Celery's consumer (``worker_consumer``) through Celery's private
hooks, which all live there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from celery.exceptions import NotRegistered
from celery.utils.log import get_logger

from batchapp.broker import guard
from batchapp.broker.queues import DEAD
from batchapp.storage.results import rejection_id

logger = get_logger(__name__)


def served_tasks(task_names: Iterable[str]) -> frozenset[str]:
    """The task names a worker runs: batchapp's own, never Celery's built-in ones."""
    return frozenset(name for name in task_names if name.startswith("batchapp."))


def on_task_message(
    handle: Callable[[Any], None],
    served: frozenset[str],
    app: Any,
    connection_errors: tuple[type[BaseException], ...],
    message: Any,
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
    _fail_unknown_task(app, message.headers, served)


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


def _fail_unknown_task(app: Any, headers: Any, served: frozenset[str]) -> None:
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
    try:
        app.backend.mark_as_failure(rejection_id(task_id, task), NotRegistered(task[:200]))
    except Exception as exc:
        logger.error("Cannot record NotRegistered for task %.100r: %s", task_id, exc)
