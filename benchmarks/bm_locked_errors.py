"""Four pool processes writing results and ledger rows to the same SQLite files, under load.

``database is locked`` is counted wherever it could show: every worker's log (its pool
processes write there too), the callers' stderr (their logging goes there), and the jobs and
tasks that failed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from harness import LOCKED, Bench, JSONDict, Target, exact, progress

NAME = "locked_errors"
FULL = {"seconds": 20.0}
QUICK = {"seconds": 3.0}


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    progress(f"locked_errors: 2 workers x 2 processes under load for {size['seconds']:g} s")
    variant = bench.variant("locked")
    with variant.workers(count=2, concurrency=2):
        out = variant.client(__name__, seconds=size["seconds"])
    in_logs = variant.locked_in_logs()
    failed = out["failed_jobs_locked"] + out["failed_tasks_locked"]
    if out["other_failures"]:
        raise RuntimeError(f"jobs or tasks failed under load: {out['other_failures'][:3]}")
    return {
        "locked_errors": in_logs + failed + out["stderr_locked"],
        "locked_detail": {
            "in_worker_logs": in_logs,
            "failed_jobs_or_tasks": failed,
            "in_client_stderr": out["stderr_locked"],
            "jobs": out["jobs"],
            "chunks": out["chunks"],
            "tasks": out["tasks"],
        },
    }


@dataclass
class LoadTally:
    """What the load callers did, and the failures they saw."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: int = 0
    chunks: int = 0
    tasks: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, *, jobs: int = 0, chunks: int = 0, tasks: int = 0, failure: str = "") -> None:
        with self.lock:
            self.jobs += jobs
            self.chunks += chunks
            self.tasks += tasks
            if failure:
                self.failures.append(failure)


def client(params: JSONDict) -> JSONDict:
    """Two callers submitting many-chunk jobs and two calling calculate_sum, for a while."""
    from batchapp import ledger
    from batchapp.service import job_context, submit_job
    from batchapp.tasks import calculate_sum

    # A retried lock error is logged, not raised: let the caller's log reach stderr.
    logging.basicConfig(level=logging.INFO)
    deadline = time.monotonic() + params["seconds"]
    tally = LoadTally()

    def submit_jobs() -> None:
        while time.monotonic() < deadline:
            view = submit_job("parallel_sum", {"n": 400, "chunk_size": 2})
            done = ledger.wait(job_context(), view.id, timeout=300)
            failure = "" if done.result == 80200 else f"job {done.status}: {done.error}"
            tally.add(jobs=1, chunks=done.chunks_total, failure=failure)

    def call_tasks() -> None:
        while time.monotonic() < deadline:
            results = [(i, calculate_sum.delay(i)) for i in range(50)]
            for i, result in results:
                try:
                    value = result.get(timeout=300)
                    tally.add(tasks=1, failure="" if value == i * (i + 1) // 2 else f"task {i}")
                except Exception as exc:
                    tally.add(tasks=1, failure=f"task {result.id}: {type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=fn) for fn in (submit_jobs, submit_jobs, call_tasks, call_tasks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    locked = [text for text in tally.failures if LOCKED in text]
    return {
        "jobs": tally.jobs,
        "chunks": tally.chunks,
        "tasks": tally.tasks,
        "failed_jobs_locked": sum(text.startswith("job") for text in locked),
        "failed_tasks_locked": sum(text.startswith("task") for text in locked),
        "other_failures": [text for text in tally.failures if LOCKED not in text],
    }


def targets(f: JSONDict, quick: bool) -> list[Target]:
    load = f["locked_detail"]
    row = Target(
        "'database is locked' under load",
        str(f["locked_errors"]),
        f"{load['jobs']} jobs, {load['chunks']} chunks, {load['tasks']} tasks",
    )
    return [exact(row, "==", 0, figure=f["locked_errors"])]
