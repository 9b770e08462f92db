"""A task's messages built once and sent many times: the chunk path's publish.

Celery's ``apply_async`` routes, merges options and builds every header again for each message
(1-1.5 ms of CPU each); a job's chunk batch builds it once (4.7 ms of CPU a 10-chunk batch
instead of 8.6 ms through ``apply_async``).
"""

from __future__ import annotations

from typing import Any

from celery import Task, uuid
from celery.app.amqp import task_message
from celery.utils.saferepr import saferepr


class TaskMessages:
    """Messages of one task for one queue that differ only in their task id and arguments.

    Celery's ``apply_async`` routes, merges options and builds every header again for each
    message (1-1.5 ms of CPU each); here that is done once, and each message is a copy with its
    own id and arguments. It goes out through Celery's ``send_task_message``, so it is the
    message ``apply_async`` sends, and the publish signals and the task-sent event still fire.
    """

    def __init__(self, task: Task, queue: str) -> None:
        app = task.app
        # Private: the task's own options (time limits, routing) as apply_async merges them.
        options = {**task._get_exec_options(), "queue": queue}
        time_limit = options.pop("time_limit", None)
        soft_time_limit = options.pop("soft_time_limit", None)
        if options.pop("expires", None) is not None:
            raise ValueError(f"{task.name} expires: each message would need its own expiry")
        self._ignore_result = bool(task.ignore_result)
        # batchapp routes by task name (routing.py), so one route serves every message.
        self._options = app.amqp.router.route(options, task.name, (), {}, task)
        parent = app.current_worker_task
        self._root_id = parent and (parent.request.root_id or parent.request.id)
        # Undocumented: Celery's builder of protocol-2 task messages, which apply_async calls.
        self._template = app.amqp.as_task_v2(
            "",
            task.name,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            create_sent_event=app.conf.task_send_sent_event,
            reply_to=app.thread_oid,
            root_id=self._root_id,
            parent_id=parent and parent.request.id,
            ignore_result=self._ignore_result,
            argsrepr="",
        )
        self._name = task.name
        self._app = app
        self._repr_levels = app.conf.task_repr_maxlevels

    @property
    def queue(self) -> Any:
        """The kombu Queue the messages go to."""
        return self._options["queue"]

    def send(self, producer: Any, args: tuple[Any, ...]) -> str:
        """Publish the task with ``args`` through ``producer`` once (no retry); returns its id.

        The queue is not declared here: declare it once with :meth:`queue` first."""
        task_id: str = uuid()
        root_id = self._root_id or task_id
        argsrepr = saferepr(args, self._app.amqp.argsrepr_maxsize, maxlevels=self._repr_levels)
        # Undocumented: the task_message tuple as_task_v2 returns and send_task_message takes.
        headers, properties, (_, kwargs, embed), sent_event = self._template
        message = task_message(
            headers={**headers, "id": task_id, "root_id": root_id, "argsrepr": argsrepr},
            properties={**properties, "correlation_id": task_id},
            body=(args, kwargs, embed),
            sent_event=sent_event
            and {**sent_event, "uuid": task_id, "root_id": root_id, "args": argsrepr},
        )
        if not self._ignore_result:
            self._app.backend.on_task_call(producer, task_id)
        # Undocumented: the publish apply_async ends in (signals, task-sent event, confirms).
        self._app.amqp.send_task_message(
            producer, self._name, message, retry=False, declare=[], **self._options
        )
        return task_id
