"""A 10-chunk ``parallel_sum`` through the ledger against a group of 10 tasks.

There is no chord reference here: batchapp's workers refuse canvas messages (a chord's header
carries the chord, and its body ``celery.accumulate`` is a built-in; see batchapp/broker/guard.py).
Celery's best chord, on Redis results with native chords, is measured by ``peers.py``
(``celery_redis``). On a database result backend a chord is polled by ``celery.chord_unlock``,
whose first check comes 1 s after the header is sent whatever the user sets.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harness import Bench, JSONDict, Target, progress, ratio, spread, timing

NAME = "parallel_sum"
FULL = {"runs": 30, "group_runs": 30}
QUICK = {"runs": 10, "group_runs": 10}


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    progress(f"parallel_sum_10: {size['runs']} jobs, {size['group_runs']} groups")
    variant = bench.variant("parallel-sum")
    with variant.workers(concurrency=2):
        out = variant.client(__name__, kind="job_and_group", **size)
    job, group = spread(out["job_ms"]), spread(out["group_ms"])
    return {
        "parallel_sum_10_ms": job["median"],
        "group_10_ms": group["median"],
        "spread": {"parallel_sum_10_ms": job, "group_10_ms": group},
        "ratios": {"parallel_sum_over_group": ratio(job["median"], group["median"])},
    }


def client(params: JSONDict) -> JSONDict:
    """The ledger job and a group of 10 (SQLite results)."""
    from celery import group

    from batchapp import ledger
    from batchapp.service import job_context, submit_job
    from batchapp.tasks import calculate_sum

    def job() -> None:
        view = submit_job("parallel_sum", {"n": 100, "chunk_size": 10})
        done = ledger.wait(job_context(), view.id, timeout=60)
        if done.status != "succeeded" or done.result != 5050:
            raise RuntimeError(f"parallel_sum: {done.status} {done.result} {done.error}")

    def group_of_10() -> None:
        if group([calculate_sum.s(10)] * 10).apply_async().get(timeout=60) != [55] * 10:
            raise RuntimeError("group of 10 calculate_sum(10) did not return [55] * 10")

    return {
        "job_ms": timed(job, params["runs"], warmup=2),
        "group_ms": timed(group_of_10, params["group_runs"], warmup=2),
    }


def timed(call: Callable[[], None], runs: int, warmup: int) -> list[float]:
    """Milliseconds per call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def targets(f: JSONDict, quick: bool) -> list[Target]:
    # The target is absolute (<= 50 ms median); the group is context.
    median = f["parallel_sum_10_ms"]
    row = Target(
        "parallel_sum n=100, 10 chunks",
        f"{median:.1f} ms",
        f"group {f['group_10_ms']:.1f} ms",
        f["ratios"]["parallel_sum_over_group"],
    )
    return [timing(row, "<=", 50, quick, figure=median)]
