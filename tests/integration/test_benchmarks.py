"""The benchmark meets its targets at quick sizes, and an interrupted run leaves nothing behind.

Quick runs hold timing targets with 2x slack (small sizes on a shared, busy machine) and
count targets exactly; see ``benchmarks/harness.py``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import processes_on, rabbitmqctl

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"

POSITIVE = {
    "rtt_ms": ("sqlite", "rpc"),
    "tasks_per_s": ("sqlite_results", "no_results"),
    "import_rows_per_s": (
        "sqlite_batchapp",
        "sqlite_cli",
        "pg_batchapp",
        "pg_copy_staging",
        "pg_copy_raw",
    ),
    "import_peak_rss_mb": ("rows_1m", "rows_4m"),
    "submit_messages": ("items", "chunks", "messages"),
    "rtt_during_import_ms": ("median", "max", "calls", "chunk_median"),
    "ticks_during_import": ("sent", "ran"),
    "chunk_lock": ("job_row_per_commit", "chunk_row_guard"),
    "flood": ("median_ms", "max_ms", "calls", "quiet_median_ms", "dead", "drain_per_s"),
    "ratios": (
        "rtt_sqlite_over_rpc",
        "tasks_sqlite_over_no_results",
        "import_sqlite_over_cli",
        "import_pg_over_copy_staging",
        "import_pg_over_copy_raw",
        "rss_4m_over_1m",
        "rtt_during_import_median_over_chunk",
        "chunk_lock_after_over_before",
        "chunks_per_s_after_over_before",
        "flood_median_over_quiet",
        "chunks_batchapp_sqlite_over_celery_rpc_group",
        "chunks_batchapp_postgresql_over_celery_redis_chord",
        "report_sqlite_large_over_small",
        "report_sqlite_small_over_recompute",
        "report_postgresql_large_over_small",
        "report_postgresql_small_over_recompute",
    ),
    "spread": ("rtt_ms", "tasks_per_s", "parallel_sum_10_ms", "group_10_ms"),
}


def is_positive(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value) and all(is_positive(item) for item in value.values())
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_quick_run_meets_every_target_and_reports_every_figure() -> None:
    # The run's own environment: the script must replace its BATCHAPP_* for its children.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--timeout", "400"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=460,
    )

    figures = json.loads(done.stdout)
    missed = [t for t in figures["targets"] if t["passed"] is False]
    assert figures["errors"] == {}, done.stderr[-4000:]
    assert missed == [], missed
    assert done.returncode == 0, done.stderr[-4000:]
    for group, keys in POSITIVE.items():
        for key in keys:
            assert is_positive(figures[group][key]), f"{group}.{key} = {figures[group][key]!r}"
    assert is_positive(figures["parallel_sum_10_ms"])
    for variant in ("batchapp_sqlite", "batchapp_postgresql", "celery_rpc_group"):
        assert is_positive(figures["chunks_per_s"][variant]["chunks_per_s"]), variant
    assert is_positive(figures["chunks_per_s"]["celery_redis_chord"]["chunks_per_s"])
    for database in ("sqlite", "postgresql"):
        report = figures["report"][database]
        assert is_positive({k: report[k] for k in ("small_s", "large_s", "recompute_s")})
    assert figures["locked_errors"] == figures["locked_in_all_logs"] == 0
    assert figures["flood"]["dead"] == figures["flood"]["bad"]
    assert figures["flood"]["lost_calls"] == figures["flood"]["wrong_calls"] == 0
    assert figures["quick"] is True
    assert all(t["passed"] is not None for t in figures["targets"])


class Progress:
    """The runner's stderr lines, read in a thread so a test can wait for one with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in stream], daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            if found := re.search(pattern, line):
                return found


def vhosts() -> str:
    return rabbitmqctl("list_vhosts", "name", "--no-table-headers")


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
    ids=["SIGTERM", "SIGINT", "SIGKILL (a timeout's kill)"],
)
def test_interrupted_run_leaves_no_process_no_vhost_and_no_folder(signum: int) -> None:
    runner = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--only", "rtt"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        progress = Progress(runner.stderr)
        vhost, folder = progress.wait_for(r"vhost (\S+), folder (\S+)").groups()
        worker = int(progress.wait_for(r"worker pid (\d+) ready").group(1))
        assert processes_on([vhost])
        runner.send_signal(signum)
        runner.wait(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()

    # SIGKILL leaves the clean-up to the guard process: give it its grace period.
    deadline = time.monotonic() + 60
    while (processes_on([vhost]) or vhost in vhosts()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert runner.returncode == (-signum if signum == signal.SIGKILL else 128 + signum)
    assert processes_on([vhost]) == set()
    assert not Path(f"/proc/{worker}").exists()
    assert vhost not in vhosts()
    assert not Path(folder).exists()
