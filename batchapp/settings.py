"""Read batchapp's configuration from ``BATCHAPP_*`` environment variables.

A ``.env`` file in the current folder is loaded first, without overriding variables that are
already set in the real environment. Every value is checked here, so a typo fails at start with
the variable's name instead of deep inside Celery or SQLAlchemy.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import warnings
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from celery.app.utils import sanitize_url
from celery.exceptions import CPendingDeprecationWarning
from dotenv import load_dotenv
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from batchapp.beat.schedule import beat_schedule
from batchapp.broker import routing

PREFIX = "BATCHAPP_"
BROKER_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "filesystem", "memory", "redis", "rediss"})
RESULT_SCHEMES = frozenset({"rpc", "redis", "rediss", "disabled"})
DATABASE_DIALECTS = frozenset({"sqlite", "postgresql"})
# Every tick expires after one interval (schedule.py), so an interval shorter than a delivery
# would expire every tick; below a microsecond it is timedelta(0) and beat sends in a busy loop.
MIN_BEAT_INTERVAL_S = 0.5
# Durations must fit datetime.timedelta and the pool's timers (a typo of 1e20 would overflow).
MAX_SECONDS = 10 * 365 * 86400
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

# Quorum by default: RabbitMQ applies prefetch per consumer to them, so a chunk backlog can
# never take a call's or a tick's place on a worker; countdowns wait on the broker (native
# delayed delivery), not in a worker; the broker caps a poison chunk's deliveries; and a
# queue survives losing a node of a cluster. Classic is for brokers older than RabbitMQ 3.10:
# Celery gives classic queues one prefetch for the whole channel, so on a worker consuming all
# queues a tick can wait for several chunks and expire; give chunks a worker of their own.
QUEUE_TYPE_DEFAULT = "quorum"

T = TypeVar("T")


class SettingsError(ValueError):
    """A BATCHAPP_* variable holds a value batchapp cannot use."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    broker_url: str
    result_backend: str
    database_url: str
    timezone: str
    task_soft_time_limit: float
    task_time_limit: float
    result_expires: int
    ledger_retention_days: int
    beat_interval: float
    # Workers send task events and callers 'task-sent' from the start (for Flower).
    task_events: bool
    prefetch_multiplier: int
    # A chunk delivered this many times without finishing (its process died each time) fails.
    max_deliveries: int
    # Seconds any wait on the broker may last in publishing and the CLI before it is an error.
    broker_timeout: float
    queue_type: str
    # Modules of job types to import at start (BATCHAPP_JOBS), besides entry points.
    jobs: tuple[str, ...] = ()
    # `batchapp web`'s users as (name, password hash) pairs: none allows only a loopback bind.
    # Kept out of repr so a logged Settings never shows a hash.
    web_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # Signs the web UI's CSRF tokens; empty: a random one per process.
    web_secret: str = field(default="", repr=False)

    @property
    def broker_is_filesystem(self) -> bool:
        return self.broker_url.startswith("filesystem:")


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """The one place worker, beat and callers share when BATCHAPP_DATA_DIR is not set."""
    home = environ.get("HOME") or str(Path.home())
    xdg = environ.get("XDG_DATA_HOME") or str(Path(home) / ".local" / "share")
    return Path(xdg) / "batchapp"


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: the process environment plus ``.env``)."""
    if environ is None:
        load_dotenv(Path.cwd() / ".env", override=False)
        environ = os.environ
    env = _Env(environ)
    data_dir = env.get("DATA_DIR", Path, default_data_dir(environ)).expanduser().resolve()
    # The hard limit defaults to soft + 60, so the soft limit leaves room for it.
    soft_limit = env.get("TASK_SOFT_TIME_LIMIT", _seconds(maximum=MAX_SECONDS - 60), 300.0)
    hard_limit = env.get("TASK_TIME_LIMIT", _seconds(), soft_limit + 60)
    if hard_limit <= soft_limit:
        raise SettingsError(
            f"{PREFIX}TASK_TIME_LIMIT ({hard_limit:g}) must be greater than "
            f"{PREFIX}TASK_SOFT_TIME_LIMIT ({soft_limit:g}), so a task gets a chance to clean up"
        )
    return Settings(
        data_dir=data_dir,
        broker_url=env.get("BROKER_URL", _broker_url, "amqp://guest:guest@localhost:5672//"),
        result_backend=env.get(
            "RESULT_BACKEND", _result_backend, f"db+sqlite:///{data_dir / 'results.sqlite'}"
        ),
        database_url=env.get(
            "DATABASE_URL", _database_url, f"sqlite:///{data_dir / 'batchapp.sqlite'}"
        ),
        timezone=env.get("TIMEZONE", _timezone, "Asia/Seoul"),
        task_soft_time_limit=soft_limit,
        task_time_limit=hard_limit,
        result_expires=env.get("RESULT_EXPIRES", _positive(int, maximum=MAX_SECONDS), 86400),
        ledger_retention_days=env.get(
            "LEDGER_RETENTION_DAYS", _positive(int, maximum=MAX_SECONDS // 86400), 30
        ),
        beat_interval=env.get("BEAT_INTERVAL", _seconds(minimum=MIN_BEAT_INTERVAL_S), 60.0),
        task_events=env.get("TASK_EVENTS", _boolean, False),
        prefetch_multiplier=env.get("PREFETCH_MULTIPLIER", _positive(int), 1),
        max_deliveries=env.get("MAX_DELIVERIES", _positive(int), 3),
        broker_timeout=env.get("BROKER_TIMEOUT", _seconds(), 30.0),
        queue_type=env.get("QUEUE_TYPE", _queue_type, QUEUE_TYPE_DEFAULT),
        jobs=env.get("JOBS", _module_names, ()),
        web_users=env.get("WEB_USERS", _web_users, ()),
        web_secret=env.get("WEB_SECRET", _web_secret, ""),
    )


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._environ.get(PREFIX + name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{PREFIX}{name}: {exc}") from None


def _positive(kind: type[T], maximum: float = math.inf) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        try:
            value = kind(raw)  # type: ignore[call-arg]
        except ValueError:
            raise ValueError(f"expected a positive {kind.__name__}, got {raw!r}") from None
        # 'not >' also refuses nan, which compares false with everything; inf is too large.
        if not value > 0:  # type: ignore[operator]
            raise ValueError(f"expected a positive {kind.__name__}, got {raw!r}")
        if value > maximum:  # type: ignore[operator]
            raise ValueError(f"{raw!r} is too large (at most {maximum:.0f})")
        return value

    return parse


def _seconds(minimum: float = 0.0, maximum: float = MAX_SECONDS) -> Callable[[str], float]:
    positive = _positive(float, maximum)

    def parse(raw: str) -> float:
        value = positive(raw)
        if value < minimum:
            raise ValueError(f"{raw!r} is too small (at least {minimum:g} seconds)")
        return value

    return parse


def _boolean(raw: str) -> bool:
    word = raw.lower()
    if word not in TRUE_WORDS | FALSE_WORDS:
        raise ValueError(f"expected true or false, got {raw!r}")
    return word in TRUE_WORDS


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme if "://" in url else ""
    if not scheme:
        raise ValueError(f"{mask_url(url)!r} is not a URL (expected scheme://...)")
    return scheme


def mask_url(url: str) -> str:
    """``url`` with its password masked; in a ``;``-separated failover list, every one's."""
    # Celery's own, which kombu's maybe_sanitize_url is not: that one masks the first only.
    return str(sanitize_url(url, mask="**"))


def _broker_url(value: str) -> str:
    """One broker URL, or a failover list (``url1;url2;...``, kombu's syntax), each checked."""
    urls = [part.strip() for part in value.split(";")]
    if "" in urls:
        raise ValueError(
            f"empty URL in the failover list {mask_url(value)!r} (separate URLs by ';')"
        )
    transports = {_broker_transport(url) for url in urls}
    if len(urls) > 1 and transports & {"filesystem", "memory"}:
        raise ValueError(f"an embedded broker cannot be in a failover list: {mask_url(value)!r}")
    if len(transports) > 1:
        raise ValueError(
            f"every URL of a failover list must use one transport, got "
            f"{', '.join(sorted(transports))} in {mask_url(value)!r}"
        )
    return ";".join(urls)


def _broker_transport(url: str) -> str:
    scheme = _scheme(url)
    if scheme not in BROKER_SCHEMES:
        raise ValueError(
            f"unsupported broker scheme {scheme!r} in {mask_url(url)!r}; "
            f"use one of {', '.join(sorted(BROKER_SCHEMES))}"
        )
    if scheme.startswith(("amqp", "pyamqp")):
        try:
            urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"{mask_url(url)!r}: {exc}") from None
    # amqp:// and pyamqp:// name the same transport.
    return scheme.removeprefix("py")


def _result_backend(url: str) -> str:
    scheme = _scheme(url)
    if scheme.startswith("db+"):
        _database_url(url.removeprefix("db+"))
    elif scheme not in RESULT_SCHEMES:
        raise ValueError(
            f"unsupported result backend {mask_url(url)!r}; use db+sqlite:///PATH, "
            f"db+postgresql://..., or one of {', '.join(sorted(RESULT_SCHEMES))}"
        )
    return url


def _database_url(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"{mask_url(url)!r} is not an SQLAlchemy URL") from None
    if parsed.get_backend_name() not in DATABASE_DIALECTS:
        raise ValueError(
            f"unsupported database {parsed.get_backend_name()!r} in "
            f"{parsed.render_as_string(hide_password=True)!r}; use sqlite or postgresql"
        )
    # A driverless postgresql:// runs on psycopg 3 (db.driver_url), an optional dependency.
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        raise ValueError(
            "postgresql needs psycopg 3, which is not installed: pip install 'batchapp[postgres]'"
        )
    return url


def _queue_type(name: str) -> str:
    if name not in routing.QUEUE_TYPES:
        raise ValueError(f"expected one of {', '.join(routing.QUEUE_TYPES)}, got {name!r}")
    return name


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _module_names(value: str) -> tuple[str, ...]:
    """``acme.jobs,other.jobs``: importable module names, each once."""
    names = [part.strip() for part in value.split(",")]
    for name in names:
        if not name:
            raise ValueError(f"empty module name in {value!r} (separate modules by ',')")
        if not _MODULE_NAME.fullmatch(name) or not name.isascii():
            raise ValueError(f"{name!r} is not a module name (expected dotted.names)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"module {repeated[0]!r} is named twice")
    return tuple(names)


# What `batchapp web-password` prints (batchapp/web/passwords.py): scrypt$N$r$p$salt$hash.
_PASSWORD_HASH = re.compile(r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+")
_USER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_WEB_SECRET_CHARS = 32


def _web_users(value: str) -> tuple[tuple[str, str], ...]:
    """``name:hash,name:hash``; the hashes never appear in an error."""
    users: dict[str, str] = {}
    for part in value.split(","):
        name, sep, hashed = part.strip().partition(":")
        if not sep or not _USER_NAME.fullmatch(name):
            raise ValueError("expected name:hash,... (names of letters, digits, _ . @ -)")
        if not _PASSWORD_HASH.fullmatch(hashed):
            raise ValueError(f"the hash of user {name!r} is not one `batchapp web-password` prints")
        if name in users:
            raise ValueError(f"user {name!r} is named twice")
        users[name] = hashed
    return tuple(users.items())


def _web_secret(value: str) -> str:
    if len(value) < MIN_WEB_SECRET_CHARS:
        raise ValueError(f"expected at least {MIN_WEB_SECRET_CHARS} characters (not shown)")
    return value


def _timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r} (expected an IANA name such as Asia/Seoul)"
        ) from None
    return name


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery 5 (lowercase) configuration for ``settings``."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        # Publisher confirms: apply_async returns only once RabbitMQ has the message.
        "broker_transport_options": {"confirm_publish": True},
        # Retry the broker at start and after a drop instead of exiting (Celery 6 default).
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # A recoverable channel error while the consumer (re)connects is retried, not fatal:
        # after a failover the node left behind may still hold the worker's exclusive control
        # queue for a moment (RESOURCE_LOCKED). batchapp's consumer narrows this to recoverable
        # errors, so a queue declared with other arguments still stops the worker.
        "broker_channel_error_retry": True,
        "result_backend": settings.result_backend,
        # 'db' URLs get batchapp's backend: WAL, one upsert per result, fast polling get().
        "override_backends": {"db": "batchapp.internals.result_backend:DatabaseBackend"},
        # Every SQLAlchemy engine Celery makes gets the same SQLite pragmas as ours.
        "database_engine_callback": "batchapp.storage.engines:configure_engine",
        # Celery's default without its pool_pre_ping: db.py pings PostgreSQL only, as a local
        # SQLite file cannot drop a connection (a replaced file is caught without a query).
        "database_engine_options": {"pool_recycle": 3600},
        # Retry result writes on transient database errors instead of failing the task.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 10,
        # JSON only: a pickle message is refused, never deserialized.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "timezone": settings.timezone,
        "enable_utc": True,
        # A runaway task is told to stop (soft) and then killed (hard); the worker lives on.
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        # Ack after the task ran, and requeue if its process died: batch tasks are idempotent.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Chunks are long: a worker holds only what it runs, so idle workers get the rest.
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "result_expires": settings.result_expires,
        # Results are opt-in per task (calculate_sum opts in); job results live in the ledger.
        "task_ignore_result": True,
        "task_track_started": False,
        # Keep our logging config.
        "worker_hijack_root_logger": False,
        # Task events cost ~1 ms a task (three publishes), so they are off unless
        # BATCHAPP_TASK_EVENTS turns them on from the start (compose does, for Flower): Flower's
        # own `enable_events` reaches only running workers, every few seconds, and stays on.
        "worker_send_task_events": settings.task_events,
        # The caller's 'task-sent' event, so Flower sees a task before a worker takes it.
        "task_send_sent_event": settings.task_events,
        # On a broker drop, let running tasks finish: their late acks are lost and RabbitMQ
        # redelivers them, but the ledger drops a chunk already done (calculate_sum is pure).
        # Cancelling would kill every running chunk on each blip and restart it from scratch.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Celery's consumer, checking every task message before Celery reads it (a bad one is
        # rejected into batchapp.dead), and failing over to another broker node without a 17 s
        # stall. It refuses to start if a private Celery hook it needs did not take.
        "worker_consumer": "batchapp.internals.consumer:Consumer",
        "beat_schedule": routing.ticks_on_periodic(beat_schedule(settings.beat_interval)),
        # Any number of beats: one leads by a lease in the database, where the schedule's state
        # lives too (a shared dbm file corrupts under two beats).
        "beat_scheduler": "batchapp.beat.scheduler:LeaderScheduler",
        "imports": [],
        **routing.celery_routing(settings.queue_type, settings.max_deliveries),
    }
    if settings.broker_is_filesystem:
        broker_dir = settings.data_dir / "broker"
        config["broker_transport_options"] = {
            "data_folder_in": str(broker_dir / "queue"),
            "data_folder_out": str(broker_dir / "queue"),
            "control_folder": str(broker_dir / "control"),
            "processed_folder": str(broker_dir / "processed"),
            "store_processed": False,
            # The embedded broker polls folders; a short interval keeps the demo snappy.
            "polling_interval": 0.05,
        }
        # No fanout exchanges on a folder: no remote control, no events.
        config["worker_enable_remote_control"] = False
        config["worker_send_task_events"] = config["task_send_sent_event"] = False
    return config


def ensure_dirs(settings: Settings) -> None:
    """Create the data directory (and the embedded broker's folders when it is used)."""
    folders = [settings.data_dir]
    if settings.broker_is_filesystem:
        folders += [settings.data_dir / "broker" / sub for sub in ("queue", "control", "processed")]
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(
                f"{PREFIX}DATA_DIR: cannot create {str(folder)!r}: {exc.strerror or exc}"
            ) from None


def ignore_cancel_on_connection_loss_warning(**_: Any) -> None:
    """Silence Celery's warning on every broker drop: keeping running tasks is our choice.

    Celery's logging set-up turns its own warnings back on, so this runs after it (at
    ``celeryd_after_setup``); see worker_cancel_long_running_tasks_on_connection_loss above.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
        category=CPendingDeprecationWarning,
    )
