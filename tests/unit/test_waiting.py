"""Whether a job's chunks may be in flight, decided from what RabbitMQ and the workers say (both
stand-ins here): a worker that does not answer may hold the job's chunks."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from batchapp import service
from batchapp.broker import queues
from batchapp.ledger import JobView

JOB = JobView(
    id="a" * 32,
    name="parallel_sum",
    params={},
    status="running",
    chunks_total=1,
    chunks_done=0,
    chunks_failed=0,
    items_done=0,
    items_failed=0,
    result=None,
    error=None,
    created_at=datetime.now(UTC),
    updated_at=datetime.now(UTC),
    finished_at=None,
)
CONSUMING = {"w1@host": [{"name": queues.CHUNKS}]}
ITS_CHUNK = {"w1@host": [{"name": service.run_chunk.name, "args": [JOB.id, 0]}]}


def broker_says(
    monkeypatch: pytest.MonkeyPatch,
    ready: int,
    consumers: int,
    answers: dict[str, Any],
) -> None:
    """The chunk queue's counts, and what the workers that answer say (missing: no answer)."""
    channel = SimpleNamespace(queue_declare=lambda **_: (queues.CHUNKS, ready, consumers))

    @contextmanager
    def connection() -> Any:
        yield SimpleNamespace(default_channel=channel)

    inspect = SimpleNamespace(
        active=lambda: answers.get("active"),
        reserved=lambda: answers.get("reserved"),
        active_queues=lambda: answers.get("active_queues"),
    )
    monkeypatch.setattr(service.app, "connection_for_write", connection)
    monkeypatch.setattr(service.app.control, "inspect", lambda **_: inspect)


@pytest.mark.parametrize(
    ("ready", "consumers", "answers", "in_flight"),
    [
        (1, 1, {}, True),
        # A paused worker: its consumer holds the message unacked and it answers nothing.
        (0, 1, {}, True),
        (0, 1, {"active": ITS_CHUNK, "active_queues": CONSUMING}, True),
        (0, 1, {"active": {"w1@host": []}, "reserved": {}, "active_queues": CONSUMING}, False),
        (0, 2, {"active": {"w1@host": []}, "reserved": {}, "active_queues": CONSUMING}, True),
        (0, 0, {}, False),
    ],
    ids=[
        "ready",
        "silent-consumer",
        "held",
        "all-answered",
        "one-of-two-silent",
        "no-consumer",
    ],
)
def test_chunks_may_be_in_flight_while_anything_could_hold_them(
    monkeypatch: pytest.MonkeyPatch,
    ready: int,
    consumers: int,
    answers: dict[str, Any],
    in_flight: bool,
) -> None:
    broker_says(monkeypatch, ready, consumers, answers)

    assert service.chunks_in_flight(JOB) is in_flight
