"""A caller process for the cluster tests: ``calculate_sum`` calls for a while, each outcome kept.

    python -m tests.cluster_caller SECONDS

Publishes ``calculate_sum(i)`` for i = 0, 1, ... for SECONDS, then reads every result it
published, and prints one JSON object: how many calls were queued, the errors of those that
failed on delay() or on get() (type and first line), and how many results came back right.
It talks to whatever the ``BATCHAPP_*`` environment names, as any caller would.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

from kombu.exceptions import OperationalError

from batchapp.sums import sum_to
from batchapp.tasks import calculate_sum

RESULT_TIMEOUT = 60.0


def describe(exc: BaseException) -> str:
    """The error's type and first line, as a caller would see it (and the cause, if any)."""
    first_line = (str(exc).splitlines() or [""])[0][:200]
    text = f"{type(exc).__module__}.{type(exc).__name__}: {first_line}"
    if exc.__cause__ is not None:
        text += f" (from {exc.__cause__!r})"
    return text


def main(seconds: float) -> dict[str, Any]:
    published: list[tuple[int, Any]] = []
    errors: Counter[str] = Counter()
    i = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        try:
            published.append((i, calculate_sum.delay(i)))
        except Exception as exc:
            errors[describe(exc)] += 1
        i += 1
        time.sleep(0.01)
    right = queued = 0
    for n, result in published:
        try:
            value = result.get(timeout=RESULT_TIMEOUT)
        except OperationalError as exc:
            # Confirms are read after delay() returns: a task RabbitMQ refused (and that could
            # not be sent again) is this error on its result, so the call failed after all.
            errors[describe(exc)] += 1
            continue
        queued += 1
        right += value == sum_to(n)
    return {
        "calls": i,
        "published": queued,
        "failed": sum(errors.values()),
        "errors": dict(errors),
        "right": right,
    }


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]))))
