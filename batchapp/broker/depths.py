"""How many messages wait in batchapp's queues, read by passive declares (RabbitMQ tells a client
the ready messages and the consumers; messages delivered but not yet acknowledged are not in
the count)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from amqp.exceptions import ChannelError

from batchapp.broker.publishing import bounded

__all__ = ["QueueDepth", "passive_declare", "queue_depths"]


@dataclass(frozen=True)
class QueueDepth:
    name: str
    ready: int
    consumers: int

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ready": self.ready, "consumers": self.consumers}


def passive_declare(channel: Any, queue: str) -> QueueDepth | None:
    """``queue``'s ready messages and consumers, or None if the broker has no such queue (the
    broker then closes ``channel``)."""
    try:
        _, ready, consumers = channel.queue_declare(queue=queue, passive=True)
    except ChannelError:
        return None
    return QueueDepth(queue, int(ready), int(consumers))


def queue_depths(app: Any, names: Iterable[str], timeout: float) -> dict[str, QueueDepth]:
    """Each queue of ``names`` the broker has, on one connection; every wait on the broker,
    connecting included, gives up after about ``timeout`` s."""
    found: dict[str, QueueDepth] = {}
    with (
        app.connection_for_write(connect_timeout=timeout) as connection,
        bounded(connection, timeout),
    ):
        channel = connection.channel()
        for name in names:
            depth = passive_declare(channel, name)
            if depth is None:
                channel = connection.channel()  # the broker closed the one that asked
            else:
                found[name] = depth
        channel.close()
    return found
