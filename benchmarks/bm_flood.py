"""``calculate_sum.delay(100).get()`` again and again while malformed messages flood its queue.

One worker started as a user would (concurrency 2, no ``-Q``). The caller times calls back to
back, first on a quiet queue (the reference), then while a thread of its own publishes
``bad`` small malformed messages (JSON content type, body ``not json``, a served task name and
a fresh id) to ``batchapp.calls`` within ``publish_s`` seconds, until every one of them is in
``batchapp.dead``. Targets: every call during the flood within 2 s and right, none timed out,
every bad message dead-lettered. The drain rate is bad messages over the time from the first
publish to the last one reaching ``batchapp.dead``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from harness import Bench, JSONDict, Target, exact, progress, ratio, spread, timing

NAME = "flood"
FULL = {"bad": 30_000, "publish_s": 9.0, "quiet_calls": 50}
QUICK = {"bad": 3_000, "publish_s": 1.0, "quiet_calls": 20}
CALL_BOUND_MS = 2000.0
# A call not answered by then is counted as lost (the callers waited 30 s).
CALL_TIMEOUT_S = 30.0


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    variant = bench.variant("flood")
    progress(f"flood: calls while {size['bad']:,} malformed messages flood the calls queue")
    with variant.workers(concurrency=2) as (worker,):
        cpu_before = cpu_s(worker.pid)
        out = variant.client(__name__, **size)
        main_cpu_s = cpu_s(worker.pid) - cpu_before
    if not out["flood_ms"]:
        raise RuntimeError(f"no call completed during the flood: {out}")
    quiet, flood = spread(out["quiet_ms"]), spread(out["flood_ms"])
    return {
        "flood": {
            "median_ms": flood["median"],
            "max_ms": flood["max"],
            "calls": flood["n"],
            "lost_calls": out["lost"],
            "wrong_calls": out["wrong"],
            "quiet_median_ms": quiet["median"],
            "bad": size["bad"],
            "dead": out["dead"],
            "drain_per_s": out["drain_per_s"],
            "publish_per_s": out["publish_per_s"],
            "drain_s": out["drain_s"],
            # The worker's main process (consumer, guard, rejections), quiet calls included.
            "main_cpu_us_per_bad": main_cpu_s / size["bad"] * 1e6,
        },
        "ratios": {"flood_median_over_quiet": ratio(flood["median"], quiet["median"])},
        "spread": {"flood_calls_ms": flood, "quiet_calls_ms": quiet},
    }


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(params: JSONDict) -> JSONDict:
    """Time quiet calls, then calls during a flood of bad messages until all are dead-lettered."""
    from batchapp.celery import app
    from batchapp.tasks import calculate_sum

    if calculate_sum.delay(1).get(timeout=60) != 1:  # connections warm before the clock starts
        raise RuntimeError("calculate_sum(1) is not 1")
    quiet = [timed_call(calculate_sum)[0] for _ in range(params["quiet_calls"])]
    dead_before = dead_count(app)
    flood = Flood(app, params["bad"], params["publish_s"])
    flood.start()
    samples: list[float] = []
    lost = wrong = 0
    deadline = time.monotonic() + params["publish_s"] + params["bad"] / 50 + 120
    dead = 0
    while time.monotonic() < deadline:
        ms, value = timed_call(calculate_sum)
        samples.append(ms)
        lost += value is None
        wrong += value is not None and value != 5050
        dead = dead_count(app) - dead_before
        if flood.done.is_set() and dead >= params["bad"]:
            break
    drained_at = time.monotonic()
    flood.join()
    if flood.error:
        raise RuntimeError(f"the flood's publisher failed: {flood.error}")
    drain_s = drained_at - flood.started_at
    return {
        "quiet_ms": quiet,
        "flood_ms": samples,
        "lost": lost,
        "wrong": wrong,
        "dead": dead,
        "drain_s": drain_s,
        "drain_per_s": dead / drain_s,
        "publish_per_s": params["bad"] / flood.publish_s,
    }


def timed_call(task: Any) -> tuple[float, Any]:
    """Milliseconds one ``task.delay(100).get()`` took, and its value (None if it timed out)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    started = time.perf_counter()
    try:
        value = task.delay(100).get(timeout=CALL_TIMEOUT_S)
    except CeleryTimeout:
        value = None
    return (time.perf_counter() - started) * 1000, value


def dead_count(app: Any) -> int:
    from batchapp.broker import dead_letters

    count, _ = dead_letters.peek(app, 0, timeout=30)
    return count


class Flood(threading.Thread):
    """Publishes ``bad`` malformed messages to the calls queue, paced over ``seconds``."""

    def __init__(self, app: Any, bad: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.app, self.bad, self.seconds = app, bad, seconds
        self.done = threading.Event()
        self.started_at = time.monotonic()
        self.publish_s = seconds
        self.error: str | None = None

    def run(self) -> None:
        from tests.flood import publish_not_json

        try:
            self.started_at = time.monotonic()
            ids = [str(uuid.uuid4()) for _ in range(self.bad)]
            self.publish_s = publish_not_json(self.app.conf.broker_url, ids, self.seconds)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()


def targets(f: JSONDict, quick: bool) -> list[Target]:
    fl = f["flood"]
    every = Target(
        f"calls during a flood, max of {fl['calls']}",
        f"{fl['max_ms']:.0f} ms",
        f"quiet median {fl['quiet_median_ms']:.1f} ms",
        target=f"<= {CALL_BOUND_MS:g} ms",
    )
    lost = Target(
        "calls during a flood, lost or wrong",
        str(fl["lost_calls"] + fl["wrong_calls"]),
        f"median {fl['median_ms']:.1f} ms",
    )
    dead = Target(
        "bad messages in batchapp.dead",
        f"{fl['dead']:,}",
        f"drained at {fl['drain_per_s']:.0f}/s (published {fl['publish_per_s']:.0f}/s)",
    )
    return [
        timing(every, "<=", CALL_BOUND_MS, quick, figure=fl["max_ms"]),
        exact(lost, "==", 0, figure=fl["lost_calls"] + fl["wrong_calls"]),
        exact(dead, "==", fl["bad"], figure=fl["dead"]),
    ]
