"""Every job type this process knows, by name, and where each came from.

Built-in jobs are registered by :mod:`batchapp.jobs`; discovered ones by
:mod:`batchapp.jobs.discovery` (``BATCHAPP_JOBS`` modules and the ``batchapp.jobs`` entry
points) and by the :func:`batchapp.jobs.decorator.job` decorator. Two jobs with one name are an
error naming both origins, never a silent replacement.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

from batchapp.jobs.base import Job, ParamError

BUILT_IN = "built-in"


class JobRegistryError(ValueError):
    """A job cannot be registered (no name, or a name already taken); one line."""


class JobRegistry(MutableMapping[str, Job]):
    """``name -> Job``, read like the dict it replaces; ``registry[name] = job`` registers."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._origins: dict[str, str] = {}
        # The origin of what registers itself while a module or entry point loads.
        self._loading: list[str] = []

    def register(self, job: Job, origin: str | None = None) -> Job:
        """Add ``job``; the same object twice is a no-op, another one with its name an error."""
        return self._add(getattr(job, "name", None), job, origin)

    def _add(self, name: object, job: Job, origin: str | None) -> Job:
        origin = origin or self.current_origin(type(job).__module__)
        if not isinstance(job, Job):
            raise JobRegistryError(f"{origin}: {job!r} is not a batchapp Job")
        if not isinstance(name, str) or not name.strip():
            raise JobRegistryError(f"{origin}: job class {type(job).__name__} has no name")
        known = self._jobs.get(name)
        if known is job:
            return job
        if known is not None:
            raise JobRegistryError(
                f"{origin}: job {name!r} clashes with the job of that name from "
                f"{self._origins[name]}"
            )
        self._jobs[name] = job
        self._origins[name] = origin
        return job

    def current_origin(self, module: str) -> str:
        """Where a job registering itself now comes from: what is loading, else its module."""
        return self._loading[-1] if self._loading else f"module {module}"

    @contextmanager
    def loading(self, origin: str) -> Iterator[None]:
        """Jobs registered meanwhile (by the decorator, say) come from ``origin``."""
        self._loading.append(origin)
        try:
            yield
        finally:
            self._loading.pop()

    def origin(self, name: str) -> str:
        """``built-in``, ``module NAME`` or ``entry point NAME (DIST)``."""
        return self._origins[name]

    def get_job(self, name: str) -> Job:
        """The job called ``name``; :class:`ParamError` lists the known ones otherwise."""
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(sorted(self._jobs))
            raise ParamError(f"unknown job {name!r} (known: {known})") from None

    def __getitem__(self, name: str) -> Job:
        return self._jobs[name]

    def __setitem__(self, name: str, job: Job) -> None:
        self._add(name, job, None)

    def __delitem__(self, name: str) -> None:
        del self._jobs[name]
        del self._origins[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def __repr__(self) -> str:
        return f"JobRegistry({sorted(self._jobs)})"


JOBS = JobRegistry()
"""The process's registry: built-ins plus whatever discovery and the decorator add."""
