"""Job types from outside batchapp: ``BATCHAPP_JOBS`` modules and ``batchapp.jobs`` entry points.

In a discovered module, every ``Job`` instance at module level and every concrete ``Job``
subclass defined in that module (not imported into it) that has a ``name`` is registered; a
class with an instance at module level is registered through that instance only. An entry point
names a module (the same rule), a ``Job`` subclass (instantiated) or a ``Job`` instance.

Any failure is a :class:`DiscoveryError` of one line naming the module or entry point (and the
job); the worker, beat and CLI stop on it (:mod:`batchapp.celery`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from batchapp.jobs.base import Job
from batchapp.jobs.registry import JOBS, JobRegistry, JobRegistryError

ENTRY_POINT_GROUP = "batchapp.jobs"


class DiscoveryError(ValueError):
    """A job module or entry point cannot be loaded or registered; one line."""


def discover(
    modules: Iterable[str], *, registry: JobRegistry = JOBS, use_entry_points: bool = True
) -> None:
    """Import each module of ``modules`` and load every entry point, registering their jobs."""
    for name in modules:
        origin = f"module {name}"
        with registry.loading(origin):
            module = _import(name, origin)
            register_module(module, origin, registry)
    if use_entry_points:
        for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
            load_entry_point(point, registry)


def _import(name: str, origin: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except JobRegistryError as exc:
        raise DiscoveryError(str(exc)) from None
    except Exception as exc:
        raise DiscoveryError(f"{origin}: cannot import it: {_reason(exc)}") from None


def register_module(module: ModuleType, origin: str, registry: JobRegistry = JOBS) -> list[Job]:
    """Register the module's jobs (see the module docstring); returns them."""
    found: list[Job] = []
    for value in list(vars(module).values()):
        if isinstance(value, Job) and not inspect.isclass(value):
            found.append(value)
    instantiated = {type(job) for job in found}
    for value in list(vars(module).values()):
        if (
            inspect.isclass(value)
            and issubclass(value, Job)
            and value.__module__ == module.__name__
            and not inspect.isabstract(value)
            and isinstance(getattr(value, "name", None), str)
            and value not in instantiated
        ):
            found.append(_instantiate(value, origin))
    for job in found:
        _register(job, origin, registry)
    return found


def load_entry_point(point: EntryPoint, registry: JobRegistry = JOBS) -> None:
    dist = point.dist.name if point.dist is not None else "unknown distribution"
    origin = f"entry point {point.name} ({dist})"
    with registry.loading(origin):
        try:
            target = point.load()
        except JobRegistryError as exc:
            raise DiscoveryError(str(exc)) from None
        except Exception as exc:
            raise DiscoveryError(f"{origin}: cannot load {point.value!r}: {_reason(exc)}") from None
        if inspect.ismodule(target):
            register_module(target, origin, registry)
        elif inspect.isclass(target) and issubclass(target, Job):
            _register(_instantiate(target, origin), origin, registry)
        elif isinstance(target, Job):
            _register(target, origin, registry)
        else:
            raise DiscoveryError(
                f"{origin}: {point.value!r} is {_a(target)}, not a module, Job class or Job"
            )


def _instantiate(cls: type[Job], origin: str) -> Job:
    try:
        return cls()
    except Exception as exc:
        raise DiscoveryError(
            f"{origin}: cannot make job {getattr(cls, 'name', cls.__name__)!r} "
            f"({cls.__name__}()): {_reason(exc)}"
        ) from None


def _register(job: Job, origin: str, registry: JobRegistry) -> None:
    try:
        registry.register(job, origin)
    except JobRegistryError as exc:
        raise DiscoveryError(str(exc)) from None


def _a(value: Any) -> str:
    kind = "class" if inspect.isclass(value) else type(value).__name__
    kind = f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
    return f"{kind} {getattr(value, '__name__', '')}".rstrip()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
