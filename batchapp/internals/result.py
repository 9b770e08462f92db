"""A result that settles its task's publish before every read of its state or value."""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult


class ResultAfterPublish(AsyncResult):  # type: ignore[misc]
    """Celery's ``AsyncResult``; :meth:`settle` runs before ``get()`` and before every read of
    ``state``, ``ready()``, ``result`` and the rest."""

    def settle(self) -> None:
        """Called before each read; a subclass waits here for what the read depends on."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.settle()
        return super().get(*args, **kwargs)

    def _get_task_meta(self) -> Any:
        # Private: the one method every state read of AsyncResult goes through. Stands in for
        # a read hook, which AsyncResult does not offer publicly.
        self.settle()
        return super()._get_task_meta()
