"""What batchapp's hooks need of Celery, kombu and py-amqp, checked when a process starts.

A release that renames or reshapes one of these would otherwise stop a hook from applying
without a failing line. :func:`broken_hooks` names each one that no longer fits; the app
refuses to start on any (see :mod:`batchapp.celery`), and ``tests/unit/test_contracts.py``
checks the behaviour behind each signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class Hook:
    """A private or undocumented attribute batchapp uses, and the parameters it passes."""

    where: str  # "module:Class.attribute" or "module:function"
    params: tuple[str, ...] = ()

    def problem(self) -> str | None:
        try:
            target = resolve(self.where)
        except (ImportError, AttributeError):
            return f"{self.where} is gone"
        if not self.params:
            return None
        try:
            known = inspect.signature(target).parameters
        except (TypeError, ValueError):
            return f"{self.where} has no signature to check"
        missing = [name for name in self.params if name not in known]
        if missing:
            return f"{self.where} no longer takes {', '.join(missing)}"
        return None


def resolve(where: str) -> Any:
    """The object at ``module:Attr.attr``."""
    module, _, path = where.partition(":")
    target: Any = import_module(module)
    for name in path.split("."):
        target = getattr(target, name)
    return target


# Each hook's module says what public behaviour it stands in for; docs/internals.md says why
# each one stays.
HOOKS: tuple[Hook, ...] = (
    # internals/channel.py
    Hook("amqp.channel:Channel._basic_publish", ("msg", "exchange", "routing_key", "timeout")),
    Hook("amqp.channel:Channel._on_basic_ack", ("delivery_tag", "multiple")),
    Hook("amqp.channel:Channel._on_basic_nack", ("delivery_tag", "multiple")),
    Hook("amqp.transport:TCPTransport.having_timeout", ("timeout",)),
    # internals/clock.py
    Hook("celery.app.base:Celery.now"),
    Hook("celery.schedules:BaseSchedule.now"),
    # internals/task_messages.py
    Hook("celery.app.task:Task._get_exec_options"),
    Hook(
        "celery.app.amqp:AMQP.as_task_v2",
        (
            "task_id",
            "name",
            "time_limit",
            "soft_time_limit",
            "create_sent_event",
            "reply_to",
            "root_id",
            "parent_id",
            "ignore_result",
            "argsrepr",
        ),
    ),
    Hook("celery.app.amqp:task_message", ("headers", "properties", "body", "sent_event")),
    # internals/result.py
    Hook("celery.result:AsyncResult._get_task_meta"),
    # internals/result_backend.py
    Hook(
        "celery.backends.database:DatabaseBackend._store_result",
        ("task_id", "result", "state", "traceback", "request"),
    ),
    Hook("celery.backends.database:DatabaseBackend._get_task_meta_for", ("task_id",)),
    Hook("celery.backends.database:DatabaseBackend._cleanup"),
    Hook(
        "celery.backends.base:Backend._get_result_meta",
        ("result", "state", "traceback", "request", "format_date", "encode"),
    ),
    Hook("celery.backends.database:DatabaseBackend._decode_stored_result", ("payload",)),
    Hook("celery.backends.database:DatabaseBackend._ensure_not_eager"),
    # internals/delays.py
    Hook("celery.utils.quorum_queues:detect_quorum_queues", ("app", "driver_type")),
    Hook(
        "kombu.transport.native_delayed_delivery:"
        "declare_native_delayed_delivery_exchanges_and_queues",
        ("connection", "queue_type"),
    ),
    Hook(
        "kombu.transport.native_delayed_delivery:bind_queue_to_native_delayed_delivery_exchange",
        ("connection", "queue"),
    ),
)


def broken_hooks(hooks: Iterable[Hook] = HOOKS) -> list[str]:
    """One line for each hook that no longer fits the installed Celery, kombu or py-amqp."""
    return [problem for hook in hooks if (problem := hook.problem()) is not None]


def versions() -> str:
    """The installed versions the hooks were checked against, for an error line."""
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("celery", "kombu", "amqp"))


def refuse_to_start(problems: list[str]) -> None:
    """End the process with one line if any hook is broken."""
    if problems:
        raise SystemExit(
            f"batchapp: Celery internals changed ({versions()}): {'; '.join(problems)}; "
            "see docs/internals.md for how to move a pin"
        )
