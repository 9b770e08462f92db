"""The benchmark script runs end to end at quick sizes and reports every figure.

It never asserts a speed: figures depend on the machine; the targets live in the script's table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"

POSITIVE = {
    "rtt_ms": ("sqlite", "rpc"),
    "tasks_per_s": ("sqlite_results", "no_results"),
    "import_rows_per_s": ("batchapp", "raw_sqlite"),
    "import_peak_rss_mb": ("rows_1m", "rows_4m"),
    "submit_messages": ("items", "chunks", "messages"),
    "ratios": (
        "rtt_sqlite_over_rpc",
        "tasks_sqlite_over_no_results",
        "import_batchapp_over_raw",
        "rss_4m_over_1m",
    ),
    "spread": ("rtt_ms", "tasks_per_s", "parallel_sum_10_ms", "group_10_ms"),
}


def is_positive(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value) and all(is_positive(item) for item in value.values())
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_quick_run_prints_every_figure_as_json() -> None:
    # The run's own environment: the script must replace its BATCHAPP_* for its children.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout)
    for group, keys in POSITIVE.items():
        for key in keys:
            assert is_positive(figures[group][key]), f"{group}.{key} = {figures[group][key]!r}"
    assert is_positive(figures["parallel_sum_10_ms"])
    assert is_positive(figures["chord_10_ms"]) or (
        figures["chord_10_ms"] is None and figures["notes"]
    )
    assert isinstance(figures["locked_errors"], int) and figures["locked_errors"] >= 0
    assert figures["quick"] is True
    assert is_positive(figures["sizes"])
