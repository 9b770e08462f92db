"""A 10-chunk ``parallel_sum`` through the ledger against a group and a chord of 10 tasks.

The chord reference runs on Redis results, the best chord a user can configure: Redis counts
the header's results itself and the last one sends the body. On a database result backend
(batchapp's SQLite one included) a chord is polled by ``celery.chord_unlock``, whose first check
comes 1 s after the header is sent whatever the user sets (``chord.run``'s ``countdown=1``;
``apply_async(countdown=...)`` delays the header instead, and ``interval`` or
``result_chord_retry_interval`` only space the later checks), so it can never beat 1 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harness import Bench, JSONDict, Target, progress, ratio, spread, timing

NAME = "parallel_sum"
FULL = {"runs": 30, "group_runs": 30, "chord_runs": 10}
QUICK = {"runs": 10, "group_runs": 10, "chord_runs": 3}
REDIS_RESULTS = "redis://127.0.0.1:6379/0"


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    progress(f"parallel_sum_10: {size['runs']} jobs, {size['group_runs']} groups")
    variant = bench.variant("parallel-sum")
    with variant.workers(concurrency=2):
        out = variant.client(__name__, kind="job_and_group", **size)
    job, group = spread(out["job_ms"]), spread(out["group_ms"])
    figures: JSONDict = {
        "parallel_sum_10_ms": job["median"],
        "group_10_ms": group["median"],
        "chord_10_ms": None,
        "spread": {"parallel_sum_10_ms": job, "group_10_ms": group, "chord_10_ms": None},
    }
    progress(f"chord_10: {size['chord_runs']} chords on Redis results (native chords)")
    chord_variant = bench.variant("chord-redis", BATCHAPP_RESULT_BACKEND=REDIS_RESULTS)
    try:
        with chord_variant.workers(concurrency=2):
            chords = chord_variant.client(__name__, kind="chord", **size)
    except RuntimeError as exc:
        bench.notes.append(f"chord_10_ms is null: no Redis chord reference ({exc})")
    else:
        chord = spread(chords["chord_ms"])
        figures["chord_10_ms"] = chord["median"]
        figures["spread"]["chord_10_ms"] = chord
    figures["ratios"] = {
        "parallel_sum_over_group": ratio(job["median"], group["median"]),
        "parallel_sum_over_chord": ratio(job["median"], figures["chord_10_ms"]),
    }
    return figures


def client(params: JSONDict) -> JSONDict:
    """The ledger job and a group of 10 (SQLite results), or a chord of 10 (Redis results)."""
    from celery import chord, group

    from batchapp import ledger
    from batchapp.celery import app
    from batchapp.tasks import calculate_sum, job_context, submit_job

    def job() -> None:
        view = submit_job("parallel_sum", {"n": 100, "chunk_size": 10})
        done = ledger.wait(job_context(), view.id, timeout=60)
        if done.status != "succeeded" or done.result != 5050:
            raise RuntimeError(f"parallel_sum: {done.status} {done.result} {done.error}")

    def group_of_10() -> None:
        if group([calculate_sum.s(10)] * 10).apply_async().get(timeout=60) != [55] * 10:
            raise RuntimeError("group of 10 calculate_sum(10) did not return [55] * 10")

    def chord_of_10() -> None:
        # celery.accumulate returns its arguments: the header's list comes back as [[55, ...]].
        body = app.signature("celery.accumulate").set(ignore_result=False)
        if chord([calculate_sum.s(10)] * 10)(body).get(timeout=60) != [[55] * 10]:
            raise RuntimeError("chord of 10 into celery.accumulate did not return [[55] * 10]")

    if params["kind"] == "chord":
        return {"chord_ms": timed(chord_of_10, params["chord_runs"], warmup=1)}
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
    # The target is absolute (<= 50 ms median); the group and the chord are context.
    chord = f"{f['chord_10_ms']:.1f} ms" if f["chord_10_ms"] else "n/a"
    median = f["parallel_sum_10_ms"]
    row = Target(
        "parallel_sum n=100, 10 chunks",
        f"{median:.1f} ms",
        f"group {f['group_10_ms']:.1f} ms, Redis chord {chord}",
        f["ratios"]["parallel_sum_over_group"],
    )
    return [timing(row, "<=", 50, quick, figure=median)]
