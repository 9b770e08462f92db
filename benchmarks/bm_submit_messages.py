"""With no worker running, a job of many items must publish one message per chunk."""

from __future__ import annotations

import time
from typing import Any

from harness import Bench, JSONDict, Target, exact, progress, ratio

NAME = "submit_messages"
FULL = {"items": 1_000_000, "chunk_size": 10_000}
QUICK = FULL


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    progress(f"submit_messages: {size['items']:,} items, chunk_size {size['chunk_size']:,}")
    variant = bench.variant("submit")
    out = variant.client(__name__, items=size["items"], chunk_size=size["chunk_size"])
    return {
        "submit_messages": {
            "items": size["items"],
            "chunks": out["chunks"],
            "messages": out["messages"],
            "submit_ms": out["submit_ms"],
        },
        "ratios": {"messages_over_chunks": ratio(out["messages"], out["chunks"])},
    }


def client(params: JSONDict) -> JSONDict:
    """Submit a big parallel_sum and count the messages queued on every batchapp queue."""
    from batchapp.celery import app
    from batchapp.tasks import submit_job

    start = time.perf_counter()
    view = submit_job("parallel_sum", {"n": params["items"], "chunk_size": params["chunk_size"]})
    submit_ms = (time.perf_counter() - start) * 1000
    # This vhost is the run's own and nothing consumes it: every message is the job's.
    messages = sum(queued(app, queue) for queue in app.amqp.queues.values())
    app.control.purge()
    return {"chunks": view.chunks_total, "messages": messages, "submit_ms": submit_ms}


def queued(app: Any, queue: Any) -> int:
    """Messages waiting in ``queue``; 0 if nothing declared it yet."""
    from amqp.exceptions import NotFound

    with app.connection_for_write() as connection:
        # A passive declare of a missing queue closes its channel: one channel per queue.
        channel = connection.channel()
        try:
            return int(queue(channel).queue_declare(passive=True).message_count)
        except NotFound:
            return 0
        finally:
            channel.close()


def targets(f: JSONDict, quick: bool) -> list[Target]:
    sent = f["submit_messages"]
    row = Target(
        f"queued messages ({sent['items']:,} items)",
        f"{sent['messages']} messages",
        f"{sent['chunks']} chunks",
        f["ratios"]["messages_over_chunks"],
    )
    return [exact(row, "==", 1)]
