"""Beat ticks during a big import on one default worker: every tick beat sends must run.

Beat runs with a short interval while the worker imports a file that takes several intervals.
A tick expires one interval after it is sent (RabbitMQ drops it then, silently), so a tick
stuck behind the import's backlog is counted as sent by beat but never runs.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import bm_import
from harness import SUCCEEDED, Bench, JSONDict, Target, exact, progress

NAME = "ticks_during_import"
# A tick waits for at most one running chunk of its own queue and lives one interval. The
# longest chunk on the ticks' queue is the sales report's, which totals the whole sales table
# and so grows with the import: at 1,000,000 rows on this machine it took 2.25 s, and at the
# full size's 1 s interval calculate_sum ticks behind it expired (README, Performance). The
# quick size keeps it inside the interval (150,000 rows, 1 s), so the suite checks what the
# import's own chunks do to ticks.
FULL = {"rows": 1_000_000, "chunk_rows": 20_000, "interval": 1.0}
QUICK = {"rows": 150_000, "chunk_rows": 5_000, "interval": 1.0}
SENT = re.compile(r"Sending due task \S+ \(([^)]+)\)")
DRAIN_S = 5.0


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    interval = size["interval"]
    variant = bench.variant("ticks-during-import", BATCHAPP_BEAT_INTERVAL=str(interval))
    path = variant.add_file(bench.sample(size["rows"]))
    progress(f"ticks_during_import: beat every {interval:g} s during {size['rows']:,} rows")
    with variant.workers(concurrency=2) as (worker,):
        with variant.beat() as beat:
            out = variant.client(bm_import.__name__, path=path.name, chunk_rows=size["chunk_rows"])
        if out["status"] != "succeeded":
            raise RuntimeError(f"the import did not succeed: {out}")
        # Beat has stopped: a tick it sent either runs soon or has expired (one interval).
        sent = Counter(SENT.findall(beat.log()))
        deadline = time.monotonic() + interval + DRAIN_S
        while (ran := ran_by_task(worker.log(), sent)) != sent and time.monotonic() < deadline:
            time.sleep(0.1)
    if sum(sent.values()) < 2:
        raise RuntimeError(f"the import ({out['seconds']:.1f} s) was too short to see ticks")
    return {
        "ticks_during_import": {
            "sent": sum(sent.values()),
            "ran": sum(ran.values()),
            "expired": sum((sent - ran).values()),
            "interval_s": interval,
            "import_s": out["seconds"],
            "by_task": {task: [sent[task], ran[task]] for task in sent},
        }
    }


def ran_by_task(log: str, sent: Counter[str]) -> Counter[str]:
    """Ticks the worker ran, by task (only beat sends these tasks in this variant)."""
    return Counter(name for name, _ in SUCCEEDED.findall(log) if name in sent)


def client(params: JSONDict) -> JSONDict:
    """The import's own caller side: submit, wait, and say how long it took."""
    return bm_import.client(params)


def targets(f: JSONDict, quick: bool) -> list[Target]:
    ticks = f["ticks_during_import"]
    row = Target(
        f"beat ticks during import (every {ticks['interval_s']:g} s)",
        f"{ticks['ran']} ran ({ticks['expired']} expired)",
        f"{ticks['sent']} sent, import {ticks['import_s']:.1f} s",
    )
    return [exact(row, "==", ticks["sent"], figure=ticks["ran"])]
