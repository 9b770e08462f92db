"""A job that declares its own schedule, for tests/integration/test_schedules.py."""

from __future__ import annotations

from typing import Any

from batchapp import Int, every, job


@job(
    "acme.heartbeat",
    params={"n": Int(min=1)},
    reduce=sum,
    schedule=every(2),
    schedule_params={"n": 5},
)
def heartbeat(spec: dict[str, Any], params: dict[str, Any]) -> int:
    """n, every two seconds"""
    return int(params["n"])
