"""Unit tier set-up: no RabbitMQ, PostgreSQL or Redis, and no worker processes.

The environment is set on import, before any test imports :mod:`batchapp.celery`: the run's data
folder, an SQLite ledger in it, and a broker URL on a closed port that nothing may contact. When
the integration tier runs in the same session (``pytest``), its conftest sets the environment
instead (the same data folder, its own vhost) and this one leaves it alone.

Every unit test runs with network connections refused: one that tries fails and names the
address, so a test that needs a service cannot land in this tier unnoticed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import run_data_dir, use_run_environment

RUN_DATA_DIR = run_data_dir()
# A port nothing listens on: a unit test that reached for the broker would fail at once.
CLOSED_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"

if os.environ.get("BATCHAPP_DATA_DIR") != str(RUN_DATA_DIR):  # not set by the integration tier
    use_run_environment(CLOSED_BROKER_URL)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse every TCP connection this process tries; fail the test that tried."""
    tried: list[Any] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refused(sock: socket.socket, address: Any) -> bool:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            tried.append(address)
            return True
        return False

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if refused(sock, address):
            raise ConnectionRefusedError(111, f"unit tests open no connection (to {address})")
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        return 111 if refused(sock, address) else connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield
    assert not tried, f"a unit test tried to connect to {tried}; it belongs in tests/integration"


@pytest.fixture(scope="module")
def cli_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment for ``batchapp`` commands: a fresh SQLite ledger for the module."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    url = f"sqlite:///{RUN_DATA_DIR / f'{name}.sqlite'}"
    return {**os.environ, "BATCHAPP_DATABASE_URL": url}
