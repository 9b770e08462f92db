"""SQLAlchemy engines: one per database URL per process, tuned for many SQLite writers.

SQLite is run in WAL mode (readers never block the writer), with ``synchronous=NORMAL``
(no fsync per commit; a commit survives a process crash, the last ones may be lost on power
loss) and a 30 s busy timeout, and write transactions start with ``BEGIN IMMEDIATE`` so two
writers queue for the lock instead of failing with "database is locked" on lock upgrade.
A pooled SQLite connection whose file was deleted or replaced is reopened on the next checkout.

The WAL is bounded: a reader that holds a read transaction keeps every commit after it in the
WAL (an outside reader during a 1M-row import grew it to 153 MB), and SQLite never gives that
space back by itself. After a write, a WAL past :data:`WAL_LIMIT_BYTES` is checkpointed and
truncated without waiting (a reader still there keeps it for the next write), and
``journal_size_limit`` truncates it to that size whenever SQLite restarts it.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.sql.expression import Executable

BUSY_TIMEOUT_MS = 30_000
# How long one try for the write lock waits inside SQLite, and the most a writer then sleeps
# before it tries again (see _begin_immediate).
WRITE_TRY_MS = 2
WRITE_RETRY_MAX_S = 0.002
# The longest a wait trusts an unchanged data_version (see watch_changes).
WATCH_REREAD_S = 1.0
# The most a WAL keeps once no reader holds it (SQLite's own checkpoints keep it near 4 MB).
WAL_LIMIT_BYTES = 32 * 1024 * 1024
_WRITE = "batchapp_write"
_FILE_ID = "batchapp_file_id"

_engines: dict[str, Engine] = {}

T = TypeVar("T")


def _forget_inherited_engines() -> None:
    for inherited in _engines.values():
        # Drop the parent's pooled connections without closing them under the parent.
        inherited.dispose(close=False)
    _engines.clear()


# A forked child (a pool process) makes its own engines, never uses its parent's connections.
os.register_at_fork(after_in_child=_forget_inherited_engines)


def engine_for(url: str, **options: Any) -> Engine:
    """The engine for ``url`` in this process; a forked child gets its own, never its parent's."""
    key = f"{url} {sorted(options.items())!r}" if options else url
    engine = _engines.get(key)
    if engine is None:
        pre_ping = make_url(url).get_backend_name() != "sqlite"
        engine = create_engine(driver_url(url), **{"pool_pre_ping": pre_ping, **options})
        configure_engine(engine)
        _engines[key] = engine
    return engine


def driver_url(url: str) -> str:
    """``url`` with psycopg (3) named where it names no driver: SQLAlchemy 2.0 means psycopg2."""
    parsed = make_url(url)
    if parsed.drivername != "postgresql":
        return url
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def configure_engine(engine: Engine) -> None:
    """Apply batchapp's SQLite pragmas to ``engine`` (Celery calls this for its own engines)."""
    if engine.dialect.name != "sqlite":
        return
    database = engine.url.database
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        _reopen_when_replaced(engine, database)


def _reopen_when_replaced(engine: Engine, path: str) -> None:
    # A connection keeps the file it opened: after the file is deleted or replaced, it would
    # write where no one reads. One stat per checkout (2-6 us; a result is 200-400 us) notices;
    # the pool then drops that connection and opens the path again.
    @event.listens_for(engine, "connect")
    def remember_file(_dbapi_connection: sqlite3.Connection, record: Any) -> None:
        record.info[_FILE_ID] = _file_id(path)

    @event.listens_for(engine, "checkout")
    def check_file(_dbapi_connection: sqlite3.Connection, record: Any, _proxy: Any) -> None:
        if _file_id(path) != record.info.get(_FILE_ID):
            raise DisconnectionError(f"{path} was deleted or replaced; reopening it")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # Let SQLAlchemy's begin event decide how a transaction starts (see _sqlite_on_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
    cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    if connection.get_execution_options().get(_WRITE, False):
        _begin_immediate(connection)
    else:
        # A deferred BEGIN takes no lock, so it cannot fail for a busy database.
        _driver(connection).execute("BEGIN")


def _driver(connection: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under ``connection``: a statement given to it straight costs
    5 us, through SQLAlchemy's exec_driver_sql 50 us (events, a result object)."""
    return cast(sqlite3.Connection, connection.connection.driver_connection)


def _begin_immediate(connection: Connection) -> None:
    """Start the connection's transaction holding the write lock (see :func:`_take_write_lock`)."""

    # BEGIN IMMEDIATE goes through SQLAlchemy, which makes "database is locked" its own
    # OperationalError (what callers retry on); the PRAGMAs cannot fail that way.
    _take_write_lock(connection.exec_driver_sql, _driver(connection).execute)


def is_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked", from the driver or as SQLAlchemy wraps it."""
    error = exc.orig if isinstance(exc, OperationalError) else exc
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


def _take_write_lock(
    execute: Callable[[str], object], pragma: Callable[[str], object] | None = None
) -> None:
    """``BEGIN IMMEDIATE``, trying every few milliseconds for up to the busy timeout; the busy
    timeout is set through ``pragma`` (by default ``execute``).

    SQLite's own busy handler sleeps 100 ms between tries once it has waited a little, and the
    lock goes to whoever asks at the instant it is free: with eight processes committing short
    transactions back to back, one of them got 1 commit in 8 s and waited 8.1 s for it. With
    short tries at short random intervals it got 2,014 and the longest wait was 0.7 s.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pragma = pragma or execute
    pragma(f"PRAGMA busy_timeout = {WRITE_TRY_MS}")
    try:
        while True:
            try:
                execute("BEGIN IMMEDIATE")
                return
            except Exception as exc:
                if not is_locked(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(random.uniform(0, WRITE_RETRY_MAX_S))
    finally:
        pragma(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


@contextmanager
def sqlite_cursor(engine: Engine, *, write: bool) -> Iterator[DBAPICursor]:
    """A cursor on one of ``engine``'s pooled SQLite connections, without SQLAlchemy's work per
    statement (a result read costs 70 us here against 370 us through a Connection).

    Without ``write`` each statement is its own transaction (one SELECT is consistent by
    itself); with it the block is one ``BEGIN IMMEDIATE ... COMMIT``, rolled back on error.
    Driver errors come out as SQLAlchemy's, which Celery's retries and our callers catch.
    """
    connection = engine.raw_connection()
    cursor = connection.cursor()
    try:
        if write:
            _take_write_lock(cursor.execute)
        try:
            yield cursor
            if write:
                cursor.execute("COMMIT")
                bound_wal(engine.url.database, cursor.execute)
        except BaseException:
            # An error SQLite answers by rolling back itself leaves nothing to roll back.
            if write and cursor.connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
    finally:
        cursor.close()
        connection.close()


@contextmanager
def watch_changes(engine: Engine) -> Iterator[Callable[[], bool] | None]:
    """A check of whether any connection committed to the database since the check last ran
    (its first run says yes), for a wait that polls: ``PRAGMA data_version`` on a connection
    held for the wait costs 9 us on SQLite, where reading a job or a result costs 70-400 us.
    None where the database cannot tell so cheaply (PostgreSQL): read on every poll there.
    It also says yes once a second whatever the version: a file replaced during the wait
    (db.py reopens it on the next checkout) never changes the held connection's version.
    """
    if engine.dialect.name != "sqlite":
        yield None
        return
    connection = engine.raw_connection()
    cursor = connection.cursor()
    seen: list[Any] = [None, 0.0]

    def changed() -> bool:
        version = cursor.execute("PRAGMA data_version").fetchone()
        now = time.monotonic()
        if version == seen[0] and now - seen[1] < WATCH_REREAD_S:
            return False
        seen[:] = [version, now]
        return True

    try:
        yield changed
    finally:
        cursor.close()
        connection.close()


def placeholder(engine: Engine | Connection) -> str:
    """The positional parameter marker for SQL given straight to the driver (exec_driver_sql)."""
    return "?" if engine.dialect.paramstyle == "qmark" else "%s"


def dialect_insert(dialect: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    """An INSERT that takes ON CONFLICT clauses, on the dialects that have them."""
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise LookupError(f"no INSERT ... ON CONFLICT for {dialect!r}")


def database_now(connection: Connection) -> datetime:
    """The database's clock, as naive UTC: one clock for every host that shares the database
    (the session's time zone aside). SQLite's is this host's clock, to the millisecond."""
    if connection.dialect.name == "sqlite":
        stamp = connection.exec_driver_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").scalar()
        return datetime.fromisoformat(str(stamp))
    # clock_timestamp(), not now(): a statement that waited on a lock sees the time after.
    found = connection.exec_driver_sql("SELECT clock_timestamp() AT TIME ZONE 'UTC'").scalar()
    if not isinstance(found, datetime):
        raise TypeError(f"database_now: expected a timestamp, got {found!r}")
    return found


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock up front, and a WAL
    grown past its limit is truncated after the commit (see :func:`bound_wal`)."""
    with engine.connect().execution_options(**{_WRITE: True}) as connection:
        with connection.begin():
            yield connection
        if engine.dialect.name == "sqlite":
            bound_wal(engine.url.database, _driver(connection).execute)


def bound_wal(database: str | None, execute: Callable[[str], object]) -> None:
    """Checkpoint and truncate the WAL of ``database`` if it grew past
    :data:`WAL_LIMIT_BYTES`; run after a commit, outside any transaction.

    It never waits: with the busy timeout at 0 a reader or writer that holds the WAL makes the
    checkpoint give up at once (it is tried again after the next write), so no writer queues
    behind it. SQLite's own checkpoint at commit has already copied into the database what no
    reader holds, so this costs little more than the truncation.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    wal = f"{database}-wal"
    try:
        if os.stat(wal).st_size <= WAL_LIMIT_BYTES:
            return
    except FileNotFoundError:
        return
    execute("PRAGMA busy_timeout = 0")
    try:
        execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError:
        pass  # busy: a reader or a writer holds it now
    finally:
        execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A consistent read of several tables."""
    with engine.connect() as connection, connection.begin():
        yield connection


def in_transaction(connection: Connection, work: Callable[[Connection], T], *, write: bool) -> T:
    """``work(connection)`` in one transaction on a connection held for several (a chunk checks
    out one connection for all its reads and writes); ``write`` as in :func:`write_transaction`.

    A worker's engine does not ping a connection at each checkout (a round trip per chunk), so
    a connection the server closed while it sat in the pool fails its first statement: the pool
    drops it and the transaction is run once more on a new one. That is safe because it never
    took effect, or (a COMMIT whose answer was lost) because the work is guarded by the rows
    it changes, as a chunk's is.
    """
    return _once_more_if_invalidated(lambda: _transaction(connection, work, write))


def read_row(connection: Connection, statement: Executable, params: dict[str, Any]) -> Any:
    """The first row of one read-only statement, on a connection held for several
    transactions, as committed when it runs.

    On PostgreSQL the statement runs outside any transaction (autocommit): one round trip
    instead of three (``BEGIN``, the statement, ``COMMIT``), and what it sees is what its own
    transaction would have seen. SQLite has no round trips: there it is a read transaction.
    A connection the server closed is replaced once, as in :func:`in_transaction`.
    """
    if connection.dialect.name == "sqlite":
        return in_transaction(
            connection, lambda c: c.execute(statement, params).first(), write=False
        )
    return _once_more_if_invalidated(lambda: _autocommit_read(connection, statement, params))


def _once_more_if_invalidated(run: Callable[[], T]) -> T:
    """``run()``, and once more if its connection was found closed (the pool replaced it)."""
    try:
        return run()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return run()


def _autocommit_read(connection: Connection, statement: Executable, params: dict[str, Any]) -> Any:
    default = connection.default_isolation_level
    connection.execution_options(isolation_level="AUTOCOMMIT")
    try:
        row = connection.execute(statement, params).first()
        connection.commit()  # ends SQLAlchemy's own transaction; nothing reaches the server
        return row
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execution_options(isolation_level=default)


def _transaction(connection: Connection, work: Callable[[Connection], T], write: bool) -> T:
    # execution_options changes this connection in place: each transaction says which it is.
    connection.execution_options(**{_WRITE: write})
    with connection.begin():
        return work(connection)
