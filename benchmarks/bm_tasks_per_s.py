"""Throughput of N trivial tasks, results stored in SQLite against results off.

Both variants run on the same worker with task events off (batchapp's default, and the best a
user can configure for throughput): the end of a batch is read from the worker's own log, the
"succeeded in" line each task writes at INFO in both variants, so seeing it costs neither.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import SUCCEEDED, Bench, JSONDict, Target, progress, ratio, spread, timing

NAME = "tasks_per_s"
FULL = {"tasks": 2000, "reps": 5}
QUICK = {"tasks": 300, "reps": 2}
TASK = "batchapp.tasks.calculate_sum"


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    progress(f"tasks_per_s: {size['tasks']} tasks x {size['reps']} reps per variant")
    variant = bench.variant("tasks")
    with variant.workers(concurrency=2) as (worker,):
        out = variant.client(
            __name__, count=size["tasks"], reps=size["reps"], log=str(worker.log_path)
        )
    rates = {name: spread(values) for name, values in out["rates"].items()}
    medians = {name: s["median"] for name, s in rates.items()}
    return {
        "tasks_per_s": medians,
        "tasks_check": out["check"],
        "ratios": {
            "tasks_sqlite_over_no_results": ratio(medians["sqlite_results"], medians["no_results"])
        },
        "spread": {"tasks_per_s": rates},
    }


class SucceededLines:
    """Counts the worker log's "succeeded in" lines for ``TASK`` as the log grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0

    def wait_for(self, count: int, timeout: float) -> float:
        """perf_counter() when ``count`` lines have been seen in all."""
        deadline = time.monotonic() + timeout
        while True:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                text = log.read()
            complete = text[: text.rfind(b"\n") + 1]
            self.offset += len(complete)
            self.count += sum(
                name == TASK for name, _ in SUCCEEDED.findall(complete.decode(errors="replace"))
            )
            if self.count >= count:
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count - self.count} of {count} tasks not done in {timeout} s")
            time.sleep(0.002)


def client(params: JSONDict) -> JSONDict:
    """N calculate_sum through one producer, both variants in turn, until the worker logs N."""
    from celery import uuid as task_uuid
    from celery.result import ResultSet

    from batchapp.broker.publishing import publish_batch
    from batchapp.celery import app
    from batchapp.sums import sum_to
    from batchapp.tasks import calculate_sum

    count = params["count"]
    lines = SucceededLines(Path(params["log"]))
    if calculate_sum.delay(1).get(timeout=60) != 1:
        raise RuntimeError("calculate_sum(1) is not 1")
    lines.wait_for(1, timeout=60)
    rates: dict[str, list[float]] = {"sqlite_results": [], "no_results": []}
    check: JSONDict = {}
    for rep in range(params["reps"]):
        # Alternate which variant goes first, so drift during the run hits both alike.
        for keep in [True, False] if rep % 2 == 0 else [False, True]:
            ids = [task_uuid() for _ in range(count)]
            options = {} if keep else {"ignore_result": True}

            def publish(producer: Any, ids: list[str] = ids, options: JSONDict = options) -> int:
                for i, task_id in enumerate(ids):
                    calculate_sum.apply_async(
                        (i,), producer=producer, task_id=task_id, retry=False, **options
                    )
                return len(ids)

            start = time.perf_counter()
            # Confirmed as one batch: the workers, not 2 ms per confirm, set the pace.
            publish_batch(app, publish)
            elapsed = lines.wait_for(lines.count + count, timeout=60) - start
            rates["sqlite_results" if keep else "no_results"].append(count / elapsed)
            if keep:
                results = ResultSet([app.AsyncResult(task_id) for task_id in ids])
                if results.join(timeout=120) != [sum_to(i) for i in range(count)]:
                    raise RuntimeError("stored results differ from calculate_sum's")
                check["sqlite_results_all_success"] = all(r.successful() for r in results)
            else:
                check["no_results_first_state"] = app.AsyncResult(ids[0]).state
    return {"rates": rates, "check": check}


def targets(f: JSONDict, quick: bool) -> list[Target]:
    rates = f["tasks_per_s"]
    row = Target(
        f"tasks/s ({f['sizes'][NAME]['tasks']} calculate_sum)",
        f"sqlite results {rates['sqlite_results']:.0f}/s",
        f"no results {rates['no_results']:.0f}/s",
        f["ratios"]["tasks_sqlite_over_no_results"],
    )
    return [timing(row, ">=", 0.7, quick)]
