"""Support for tests and benchmarks: a RabbitMQ vhost of their own, a clear broker check, the
run's data folder, the ``batchapp`` command as a user runs it, and one way to wait."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from kombu.connection import Connection

from batchapp.settings import mask_url

RABBITMQ_HOST = "127.0.0.1:5672"
START_RABBITMQ = "rabbitmq-server -detached && rabbitmqctl await_startup"
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


def _rabbitmqctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        raise BrokerUnreachable(f"rabbitmqctl is not installed; start RabbitMQ: {START_RABBITMQ}")
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def rabbitmq_vhost(prefix: str = "batchapp-test") -> Iterator[str]:
    """A fresh vhost for guest, deleted afterwards; yields its AMQP URL."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ_HOST}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)


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
