"""A job for the web UI's tests: slow chunks, a chunk that fails on purpose, and a free-text
note (where a hostile parameter goes). Loaded with ``BATCHAPP_JOBS=tests.web_jobs``."""

from __future__ import annotations

import time
from typing import Any

from batchapp import Int, Str, job, ranges


@job(
    "web.slow",
    params={
        "n": Int(min=0, max=10_000),
        "ms": Int(min=0, max=60_000, default=0),
        "fail": Int(min=0, max=10_000, default=0),
        "note": Str(max_len=200, default="-"),
    },
    chunks=lambda p: ranges(1, p["n"], 1),
    reduce=sum,
)
def slow(spec: dict[str, Any], params: dict[str, Any]) -> int:
    """1 + ... + n, a chunk per number taking ms each; chunk number `fail` raises"""
    time.sleep(params["ms"] / 1000)
    if spec["first"] == params["fail"]:
        raise ValueError(f"<b>number {params['fail']} fails on purpose</b>")
    return int(spec["first"])
