"""Support for tests and benchmarks: a RabbitMQ vhost of their own, a clear broker check, the
run's data folder, the ``batchapp`` command as a user runs it, and one way to wait.

Every ``rabbitmqctl`` and PostgreSQL admin statement goes through :func:`admin_command` or
:func:`postgres_admin`: each has a timeout and fails with one line naming the command, so a
broker or server that stops answering fails the run at once instead of hanging it.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from kombu.connection import Connection

from batchapp.settings import mask_url

RABBITMQ_HOST = "127.0.0.1:5672"
START_RABBITMQ = "rabbitmq-server -detached && rabbitmqctl await_startup"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# A healthy broker answers an admin command in about a second, a loaded one in a few.
ADMIN_TIMEOUT_S = 60.0
# A vhost the suite or a benchmark makes is named PREFIX-pPID-HEX, PID the process that holds
# it: one whose process is gone was left behind by a killed run and may be swept.
VHOST_NAME = re.compile(r"^batchapp-[a-z0-9_-]+-p(?P<pid>[0-9]+)-[0-9a-f]{8}$")
T = TypeVar("T")

_run_data_dir: list[Path] = []


def use_run_environment(broker_url: str) -> None:
    """Only this run's ``BATCHAPP_*`` settings in the environment, for this process (the
    caller) and every process it starts: its data folder, ``broker_url`` and a SQLite ledger."""
    folder = run_data_dir()
    for name in [n for n in os.environ if n.startswith("BATCHAPP_")]:
        del os.environ[name]
    os.environ.update(
        BATCHAPP_DATA_DIR=str(folder),
        BATCHAPP_BROKER_URL=broker_url,
        BATCHAPP_DATABASE_URL=f"sqlite:///{folder / 'caller.sqlite'}",
        # Worker, beat and CLI must start with deprecations as errors (Celery's derive from these).
        PYTHONWARNINGS="error::DeprecationWarning,error::PendingDeprecationWarning",
    )


def run_data_dir() -> Path:
    """The test run's data folder, made on first use and shared by both tiers' conftests.

    Gone when the process that made it exits: the workers the tests started have stopped by
    then, and a run no longer leaves its folder (results, ledgers, logs) in /tmp.
    """
    if not _run_data_dir:
        folder = Path(tempfile.mkdtemp(prefix="batchapp-test-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _run_data_dir.append(folder)
    return _run_data_dir[0]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``batchapp ARGS`` as a user runs it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "batchapp"), *args],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


class BrokerUnreachable(RuntimeError):
    """RabbitMQ did not answer; the message says how to start it."""


def require_broker(url: str, timeout: float = 3.0) -> None:
    """Connect once to ``url``, or raise :class:`BrokerUnreachable` with one clear line."""
    try:
        with Connection(url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        raise BrokerUnreachable(
            f"RabbitMQ is not reachable at {mask_url(url)} ({exc}); start it with: {START_RABBITMQ}"
        ) from None


class AdminCommandError(RuntimeError):
    """An admin command failed or did not answer; the message is one line naming it."""


def admin_command(command: Sequence[str], timeout: float = ADMIN_TIMEOUT_S, **popen: Any) -> str:
    """Run ``command`` and return its stdout, or raise :class:`AdminCommandError` with one line:
    ``rabbitmqctl add_vhost x: no answer in 60 s`` or ``...: exit 2: <its last error line>``.

    On timeout the command's whole process group is killed (``rabbitmqctl`` is a script that
    starts an Erlang VM). ``popen`` goes to :class:`subprocess.Popen` (env, cwd, user, ...).
    """
    shown = " ".join(arg for arg in command if arg != "-q")
    try:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **popen,
        )
    except OSError as exc:
        raise AdminCommandError(f"{shown}: cannot start: {exc.strerror or exc}") from None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise AdminCommandError(f"{shown}: no answer in {timeout:g} s") from None
    if process.returncode != 0:
        lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
        said = f": {lines[-1]}" if lines else ""
        raise AdminCommandError(f"{shown}: exit {process.returncode}{said}")
    return str(stdout)


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.communicate()


def rabbitmqctl(*args: str, timeout: float = ADMIN_TIMEOUT_S) -> str:
    """``rabbitmqctl -q ARGS`` on the machine's node; one line naming it if it fails."""
    if shutil.which("rabbitmqctl") is None:
        raise BrokerUnreachable(f"rabbitmqctl is not installed; start RabbitMQ: {START_RABBITMQ}")
    return admin_command(["rabbitmqctl", "-q", *args], timeout=timeout)


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a fresh database ``<prefix>_<hex8>`` on the local PostgreSQL, dropped (its
    connections forced closed) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    postgres_admin(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        yield url
    finally:
        from batchapp.storage.engines import engine_for

        engine_for(url).dispose()
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_admin(
    statement: str, url: str = POSTGRES_ADMIN_URL, timeout: float = ADMIN_TIMEOUT_S
) -> None:
    """Run one admin statement (CREATE/DROP DATABASE, ALTER ROLE, ...) in autocommit, with a
    connect, statement and lock timeout; one line naming the statement if it fails."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    from batchapp.storage.engines import driver_url

    milliseconds = int(timeout * 1000)
    engine = create_engine(
        driver_url(url),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={
            "connect_timeout": max(1, int(timeout)),
            "options": f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}",
        },
    )
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    except DBAPIError as exc:
        lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
        raise AdminCommandError(f"postgres {statement}: {lines[0] if lines else exc}") from None
    finally:
        engine.dispose()


# A suite vhost holds 32 quorum queues (three task queues, batchapp.dead and Celery's 28 delay
# queues), about 115 Erlang processes on the broker: a process may hold this many at once
# (benchmarks/peers.py needs 5, one per system on RabbitMQ), so a leak in a loop fails here, not
# on the shared broker.
MAX_VHOSTS_PER_PROCESS = 5
# Vhosts this process holds now, and the most it held at once (printed at the end of a run).
live_vhosts: set[str] = set()
peak_vhosts = [0]


@contextmanager
def rabbitmq_vhost(prefix: str = "batchapp-test") -> Iterator[str]:
    """A fresh vhost for guest, deleted afterwards; yields its AMQP URL.

    Its name carries this process's pid, so :func:`sweep_stale_vhosts` can tell a vhost a
    killed run left behind from one a live run still uses.
    """
    if len(live_vhosts) >= MAX_VHOSTS_PER_PROCESS:
        raise RuntimeError(
            f"rabbitmq_vhost({prefix!r}): this process already holds {len(live_vhosts)} vhosts "
            f"(at most {MAX_VHOSTS_PER_PROCESS}): {' '.join(sorted(live_vhosts))}"
        )
    name = f"{prefix}-p{os.getpid()}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    live_vhosts.add(name)
    peak_vhosts[0] = max(peak_vhosts[0], len(live_vhosts))
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ_HOST}/{name}"
    finally:
        try:
            rabbitmqctl("delete_vhost", name)
        finally:
            live_vhosts.discard(name)


def stale_vhosts(names: Iterable[str]) -> list[str]:
    """Of ``names``, the suite's vhosts whose holding process is gone (never another run's)."""
    stale = []
    for name in names:
        found = VHOST_NAME.match(name)
        if found and not _alive(int(found["pid"])):
            stale.append(name)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sweep_stale_vhosts(grace: float = 20.0) -> list[str]:
    """Delete the vhosts killed runs left behind (see :func:`stale_vhosts`); their names.

    The workers and beats such a run started may outlive it (each in a session of its own):
    those whose environment names a stale vhost get SIGTERM, and SIGKILL after ``grace``
    seconds, before the vhost goes, so none keeps reconnecting to it.
    """
    stale = stale_vhosts(rabbitmqctl("list_vhosts", "name", "--no-table-headers").split())
    if stale:
        _stop_processes_on(stale, grace)
    for name in stale:
        rabbitmqctl("delete_vhost", name)
    return stale


def _stop_processes_on(vhosts: list[str], grace: float) -> None:
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_on(vhosts):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while processes_on(vhosts) and time.monotonic() < deadline:
            time.sleep(0.1)


def processes_on(vhosts: Iterable[str]) -> set[int]:
    """Live processes whose environment names one of ``vhosts`` (a run's workers, clients)."""
    markers = [f"/{vhost}\0".encode() for vhost in vhosts]
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            text = environ.read_bytes()
            state = environ.with_name("stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # ended while we looked, or not ours to read
        if state != "Z" and any(marker in text for marker in markers):
            found.add(int(environ.parent.name))
    return found


def wait_until(
    condition: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.05
) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns a truthy value, and return
    that value; after ``timeout`` seconds, raise AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
