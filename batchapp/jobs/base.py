"""What a batch job is: parameters, a plan of chunks, per-chunk work, and a reduce."""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from batchapp.beat.timing import Schedule, check_schedule
from batchapp.broker import queues
from batchapp.validate import shown

if TYPE_CHECKING:
    # Only for annotations: the settings module pulls in Celery, which the ledger never needs.
    from batchapp.settings import Settings

JSON = Any
MAX_CHUNKS = 10_000

_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*")
_MAX_INT_TEXT = 40


class ParamError(ValueError):
    """A job parameter is missing, unknown, or out of range."""


@dataclass(frozen=True)
class JobContext:
    """What job code may use: settings, the batchapp database, and the result store."""

    settings: Settings
    engine: Engine
    expire_results: Callable[[], None] = field(default=lambda: None)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.settings.timezone)


@dataclass(frozen=True)
class Chunk:
    """One chunk at commit time: its job, the job's parameters, its spec, what prepare made."""

    job_id: str
    params: dict[str, JSON]
    spec: dict[str, JSON]
    prepared: Any


@dataclass(frozen=True)
class ChunkOutcome:
    items_done: int
    items_failed: int = 0
    output: JSON = None


class Job(ABC):
    """A batch job. Chunks run in parallel; the last one to finish runs :meth:`reduce`.

    :meth:`commit` runs in the same transaction that marks the chunk done, so a chunk that the
    broker delivers twice writes its output once.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    params_help: ClassVar[str]
    # The queue its chunks travel on: a periodic job's never wait behind an import's.
    queue: ClassVar[str] = queues.CHUNKS
    # Beat runs the job on this schedule (every(SECONDS) or cron("M H DOM MON DOW")) with these
    # parameters, checked by parse_params when beat starts; None: on demand only.
    schedule: ClassVar[Schedule | None] = None
    schedule_params: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A job's own parse_params and plan may raise anything (int(raw["n"]) raises
        # ValueError or KeyError): it reaches the CLI as a one-line ParamError naming the job.
        super().__init_subclass__(**kwargs)
        check_schedule(cls.schedule, cls.schedule_params, getattr(cls, "name", cls.__name__))
        if "parse_params" in cls.__dict__:
            cls.parse_params = _guard_parse_params(cls.__dict__["parse_params"])  # type: ignore[method-assign]
        if "plan" in cls.__dict__:
            cls.plan = _guard_plan(cls.__dict__["plan"])  # type: ignore[method-assign]

    @abstractmethod
    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, JSON]:
        """Checked, JSON-ready parameters; :class:`ParamError` names what is wrong."""

    @abstractmethod
    def plan(self, params: dict[str, JSON], ctx: JobContext) -> Iterator[dict[str, JSON]]:
        """One spec per chunk, in order."""

    def prepare(self, params: dict[str, JSON], spec: dict[str, JSON], ctx: JobContext) -> Any:
        """CPU or I/O work done outside any transaction (parsing, say); default: nothing."""
        return None

    @abstractmethod
    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        """Write the chunk's output in the ledger's transaction."""

    def reduce(self, params: dict[str, JSON], outputs: list[JSON]) -> JSON:
        """The job's result from its chunks' outputs, in chunk order; runs in the transaction
        that marks the last chunk done, so keep it small."""
        return None


# Kept as they are: a file or the database failing is not the job's mistake, and callers
# already report (and periodic runs retry) them.
_PASSED_THROUGH = (ParamError, OSError, SQLAlchemyError)
# The guards made so far, so a method is never wrapped twice.
_GUARDED: set[Callable[..., Any]] = set()


def _job_name(job: Job) -> str:
    return str(getattr(job, "name", type(job).__name__))


def _failure(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _guard_parse_params(method: Callable[..., dict[str, JSON]]) -> Callable[..., dict[str, JSON]]:
    if method in _GUARDED:
        return method

    @functools.wraps(method)
    def parse_params(self: Job, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, JSON]:
        try:
            return method(self, raw, ctx)
        except _PASSED_THROUGH:
            raise
        except Exception as exc:
            raise ParamError(f"{_job_name(self)}: bad parameters ({_failure(exc)})") from exc

    _GUARDED.add(parse_params)
    return parse_params


def _guard_plan(
    method: Callable[..., Iterator[dict[str, JSON]]],
) -> Callable[..., Iterator[dict[str, JSON]]]:
    if method in _GUARDED:
        return method

    @functools.wraps(method)
    def plan(self: Job, params: dict[str, JSON], ctx: JobContext) -> Iterator[dict[str, JSON]]:
        try:
            yield from method(self, params, ctx)
        except _PASSED_THROUGH:
            raise
        except Exception as exc:
            raise ParamError(
                f"{_job_name(self)}: cannot plan its chunks ({_failure(exc)})"
            ) from exc

    _GUARDED.add(plan)
    return plan


def utcnow() -> datetime:
    """Naive UTC, the form every batchapp timestamp is stored in."""
    return datetime.now(UTC).replace(tzinfo=None)


def check_keys(job: str, raw: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamError(
            f"{job}: unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )


def int_param(
    job: str,
    raw: Mapping[str, Any],
    name: str,
    *,
    default: int | None = None,
    minimum: int,
    maximum: int,
) -> int:
    """An int parameter given as an int or as decimal text (from the CLI)."""
    value = raw.get(name, default)
    if value is None:
        raise ParamError(f"{job}: missing parameter {name} (an integer)")
    if isinstance(value, str):
        text = value.strip()
        # Plain decimal text only: int() itself raises on '--5' and on 5,000 digits.
        if len(text) > _MAX_INT_TEXT or not _INT_TEXT.fullmatch(text):
            raise ParamError(f"{job}: {name} must be an integer, got {shown(value)}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(f"{job}: {name} must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ParamError(
            f"{job}: {name} must be between {minimum:,} and {maximum:,}, got {value:,}"
        )
    return value


def str_param(job: str, raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if value is None:
        raise ParamError(f"{job}: missing parameter {name}")
    if not isinstance(value, str) or not value.strip():
        raise ParamError(f"{job}: {name} must be a non-empty string, got {shown(value)}")
    return value.strip()
