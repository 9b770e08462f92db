"""Integration tier set-up: one RabbitMQ vhost and one data folder per run, real processes.

The environment is set here, before any test imports :mod:`batchapp.celery`, so this process
(the caller) and every worker it starts talk to the run's own vhost. Each module that needs
workers gets a :class:`Stack` with a fresh ledger database; workers started through it are
always stopped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from kombu.entity import Exchange, Queue

from batchapp.cli import processes
from tests.examples import WORDCOUNT, install_example
from tests.support import (
    POSTGRES_ADMIN_URL,
    AdminCommandError,
    BrokerUnreachable,
    peak_vhosts,
    postgres_admin,
    postgres_database,
    rabbitmq_vhost,
    require_broker,
    run_data_dir,
    sweep_stale_vhosts,
    use_run_environment,
)

# The same folder as the unit tier's when both run in one session (``pytest``).
RUN_DATA_DIR = run_data_dir()
RESULT_TIMEOUT = 30.0

_session = ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    try:
        require_broker("amqp://guest:guest@127.0.0.1:5672//")
        # Vhosts of killed runs hold their queues (and the broker's memory) until deleted.
        swept = sweep_stale_vhosts()
        if swept:
            print(f"deleted {len(swept)} vhost(s) killed runs left: {' '.join(swept)}")
        use_run_environment(_session.enter_context(rabbitmq_vhost()))
    except (BrokerUnreachable, AdminCommandError) as exc:
        pytest.exit(str(exc), returncode=3)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"RabbitMQ vhosts this run held at most at once: {peak_vhosts[0]}")


def pytest_unconfigure(config: pytest.Config) -> None:
    _session.close()


@dataclass
class Stack:
    """Workers and beat for one module, sharing a ledger database and the run's vhost."""

    name: str
    database_url: str
    env: dict[str, str]
    started: list[processes.CeleryProcess] = field(default_factory=list)

    @property
    def ctx(self):  # type: ignore[no-untyped-def]
        from batchapp.celery import settings
        from batchapp.jobs import JobContext
        from batchapp.storage.engines import engine_for
        from batchapp.storage.tables import ensure_schema

        engine = engine_for(self.database_url)
        ensure_schema(engine)
        return JobContext(settings=replace(settings, database_url=self.database_url), engine=engine)

    def worker(
        self, name: str = "w1", concurrency: int = 2, extra: Sequence[str] = (), **env: str
    ) -> processes.CeleryProcess:
        process = processes.worker(
            {**self.env, **env},
            RUN_DATA_DIR / "logs" / f"{self.name}-{name}-{uuid.uuid4().hex[:6]}.log",
            concurrency=concurrency,
            hostname=f"{name}@%h",
            extra=extra,
        )
        self.started.append(process)
        return process.wait_ready()

    def beat(self, **env: str) -> processes.CeleryProcess:
        process = processes.beat(
            {**self.env, **env},
            RUN_DATA_DIR / "logs" / f"{self.name}-beat-{uuid.uuid4().hex[:6]}.log",
        )
        self.started.append(process)
        return process.wait_ready()

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


def purge_queue() -> None:
    """Drop messages a previous module left in the run's queue."""
    from batchapp.celery import app

    # A connection of its own: a pooled one may have been closed by a broker restart meanwhile.
    with app.connection_for_write() as connection:
        app.control.purge(connection=connection)


def refusing_queue() -> Queue:
    """A queue RabbitMQ refuses every message for (with a nack), as a quorum queue does while
    it elects a leader; it goes away with the connection that declared it."""
    name = f"batchapp-full-{uuid.uuid4().hex[:6]}"
    return Queue(
        name,
        Exchange(name, "direct", auto_delete=True),
        routing_key=name,
        auto_delete=True,
        queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A fresh SQLite ledger for the module; workers come from ``stack.worker()``."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    url = f"sqlite:///{RUN_DATA_DIR / f'{name}.sqlite'}"
    yield from _stack(name, url)


def _stack(name: str, database_url: str) -> Iterator[Stack]:
    purge_queue()
    stack = Stack(name, database_url, {**os.environ, "BATCHAPP_DATABASE_URL": database_url})
    try:
        yield stack
    finally:
        stack.stop_all()
        purge_queue()


def stack_with_jobs(request: pytest.FixtureRequest, jobs_module: str) -> Iterator[Stack]:
    """A stack whose worker and CLI load ``jobs_module`` through BATCHAPP_JOBS: the module's
    SQLite ``stack`` for the param "sqlite", a PostgreSQL ledger of its own for "postgresql"."""
    own = {"BATCHAPP_JOBS": jobs_module}
    if request.param == "sqlite":
        stack: Stack = request.getfixturevalue("stack")
        stack.env = {**stack.env, **own}
        stack.worker()
        yield stack
        stack.stop_all()
    else:
        url: str = request.getfixturevalue("postgres_url")
        name = request.module.__name__.rsplit(".", 1)[-1]
        for pg_stack in _stack(f"{name}_pg", url):
            pg_stack.env = {**pg_stack.env, **own}
            pg_stack.worker()
            yield pg_stack


@pytest.fixture(scope="session")
def wordcount_example() -> Path:
    """examples/wordcount installed with ``pip install -e``: every worker and CLI started from
    now on finds ``acme.wordcount`` through the example's ``batchapp.jobs`` entry point."""
    install_example(WORDCOUNT, "acme_batch")
    return WORDCOUNT


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    with postgres_database("batchapp_test") as url:
        yield url


def _psql(statement: str) -> None:
    postgres_admin(statement, POSTGRES_ADMIN_URL)
