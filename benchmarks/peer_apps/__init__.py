"""The systems benchmarks/peers.py compares, one module each: the caller side of each.

Each module reads its broker, result store and queue name from the ``PEERS_*`` variables that
peers.py sets (peers.py also starts its workers), and offers the same three calls:
``call(n)`` (one task, wait for its result), ``call_many(ns)`` (enqueue every task, then wait
for every result) and ``map_reduce(n, chunk_size)`` (1 + ... + n as one chunk task per range,
then a reduce). Every system runs the same task bodies, from :mod:`batchapp.sums`.
"""

from __future__ import annotations

import os
from typing import Any

RESULT_TIMEOUT_S = 120


def setting(name: str) -> str:
    """``PEERS_<name>``, which peers.py always sets for the system it starts."""
    value = os.environ.get(f"PEERS_{name}")
    if not value:
        raise RuntimeError(f"PEERS_{name} is not set: run this through benchmarks/peers.py")
    return value


def ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """1..n cut into ``(first, last)`` ranges of ``chunk_size``, as batchapp's parallel_sum."""
    return [(first, min(first + chunk_size - 1, n)) for first in range(1, n + 1, chunk_size)]


def delay_and_get(task: Any, n: int) -> int:
    """A Celery task's ``delay(n).get()`` (batchapp's calculate_sum and stock Celery's)."""
    return int(task.delay(n).get(timeout=RESULT_TIMEOUT_S))


def delay_all_then_get(task: Any, ns: list[int]) -> list[int]:
    """``delay`` for every n, then every result in order."""
    pending = [task.delay(n) for n in ns]
    return [int(result.get(timeout=RESULT_TIMEOUT_S)) for result in pending]
