"""``calculate_sum.delay(100).get()`` again and again while one default worker imports a file.

One worker started as a user would (concurrency 2, no ``-Q``) gets a big import; the caller
makes one call after another for as long as the import runs and times each. Calls started
after the job finished do not count (the loop's last check can race the last chunk). Targets:
every call within 2 s, and the median within one chunk's run time, measured in the same run
from the worker's "succeeded in" lines. A call queued behind the import's backlog waits for
the whole import instead: its one slow sample is then the median.
"""

from __future__ import annotations

import time
from datetime import UTC

from harness import Bench, JSONDict, Target, progress, ratio, spread, task_runtimes, timing

NAME = "rtt_during_import"
FULL = {"rows": 1_000_000, "chunk_rows": 20_000}
QUICK = {"rows": 200_000, "chunk_rows": 10_000}
CALL_BOUND_MS = 2000.0


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    variant = bench.variant("rtt-during-import")
    path = variant.add_file(bench.sample(size["rows"]))
    progress(f"rtt_during_import: calls during an import of {size['rows']:,} rows, one worker")
    with variant.workers(concurrency=2) as (worker,):
        out = variant.client(__name__, path=path.name, **size)
    chunk_s = task_runtimes(worker.log(), "batchapp.tasks.run_chunk")
    if not out["samples_ms"] or not chunk_s:
        raise RuntimeError(f"no call or no chunk to time: {len(chunk_s)} chunks logged, {out}")
    calls, chunks = spread(out["samples_ms"]), spread([s * 1000 for s in chunk_s])
    return {
        "rtt_during_import_ms": {
            "median": calls["median"],
            "max": calls["max"],
            "calls": calls["n"],
            "chunk_median": chunks["median"],
            "import_s": out["seconds"],
        },
        "ratios": {"rtt_during_import_median_over_chunk": ratio(calls["median"], chunks["median"])},
        "spread": {"rtt_during_import_ms": calls, "chunk_run_ms": chunks},
    }


def client(params: JSONDict) -> JSONDict:
    """Submit the import, then time calls back to back for as long as it runs."""
    from batchapp import ledger
    from batchapp.service import job_context, submit_job
    from batchapp.tasks import calculate_sum

    if calculate_sum.delay(1).get(timeout=60) != 1:  # connections warm before the clock starts
        raise RuntimeError("calculate_sum(1) is not 1")
    start = time.perf_counter()
    view = submit_job("import_csv", {"path": params["path"], "chunk_rows": params["chunk_rows"]})
    calls: list[tuple[float, float]] = []  # (started at, milliseconds)
    while not ledger.get(job_context(), view.id).finished:
        started_at, called = time.time(), time.perf_counter()
        value = calculate_sum.delay(100).get(timeout=3600)
        calls.append((started_at, (time.perf_counter() - called) * 1000))
        if value != 5050:
            raise RuntimeError(f"calculate_sum(100) returned {value!r}")
    done = ledger.wait(job_context(), view.id, timeout=3600)
    if done.status != "succeeded" or done.result["imported"] != params["rows"]:
        raise RuntimeError(f"the import did not succeed: {done.status} {done.result} {done.error}")
    assert done.finished_at is not None
    finished = done.finished_at.replace(tzinfo=done.finished_at.tzinfo or UTC).timestamp()
    samples = [ms for started_at, ms in calls if started_at < finished]
    return {"samples_ms": samples, "seconds": time.perf_counter() - start}


def targets(f: JSONDict, quick: bool) -> list[Target]:
    rtt = f["rtt_during_import_ms"]
    every = Target(
        f"rtt during import, max of {rtt['calls']} calls",
        f"{rtt['max']:.0f} ms",
        f"import {rtt['import_s']:.1f} s",
        target=f"<= {CALL_BOUND_MS:g} ms",
    )
    median = Target(
        "rtt during import, median",
        f"{rtt['median']:.0f} ms",
        f"one chunk runs {rtt['chunk_median']:.0f} ms",
        f["ratios"]["rtt_during_import_median_over_chunk"],
    )
    return [
        timing(every, "<=", CALL_BOUND_MS, quick, figure=rtt["max"]),
        timing(median, "<=", 1.0, quick),
    ]
