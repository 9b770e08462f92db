"""Measure batchapp against plain Celery and plain SQLite references, in one run.

    python benchmarks/run.py            # full sizes (several minutes), a table on stdout
    python benchmarks/run.py --quick    # small sizes, under a minute
    python benchmarks/run.py --json     # one JSON object on stdout (progress on stderr)
    python benchmarks/run.py --only rtt,import --timeout 600

Each measure is a module ``bm_<name>.py`` beside this runner. The run uses a RabbitMQ vhost of
its own and a temporary folder, and removes both; SIGTERM, SIGINT and ``--timeout`` stop every
process it started first, and a guard process does the same if the runner is SIGKILLed. The
exit status is 0 only when every measure ran and met its target.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import bm_chunk_lock
import bm_chunks_per_s
import bm_flood
import bm_import
import bm_locked_errors
import bm_parallel_sum
import bm_report
import bm_rtt
import bm_rtt_during_import
import bm_submit_messages
import bm_tasks_per_s
import bm_ticks_during_import
from harness import Bench, Guard, JSONDict, Target, progress, registering, stop_on_signals

from tests.support import rabbitmq_vhost, sweep_stale_vhosts

MEASURES: tuple[ModuleType, ...] = (
    bm_rtt,
    bm_tasks_per_s,
    bm_parallel_sum,
    bm_chunk_lock,
    bm_chunks_per_s,
    bm_submit_messages,
    bm_locked_errors,
    bm_import,
    bm_rtt_during_import,
    bm_ticks_during_import,
    bm_flood,
    bm_report,
)


def run(measures: Sequence[ModuleType], quick: bool, keep: bool = False) -> JSONDict:
    """Every measure on one vhost and one temporary folder, both removed afterwards."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="batchapp-bench-"))
    guard = Guard()
    if not keep:
        guard.tell("folder", root)
    errors: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            # Workers start in the current folder, where settings would read a stray .env file.
            stack.enter_context(contextlib.chdir(root))
            if swept := sweep_stale_vhosts():
                progress(f"deleted vhosts killed runs left: {' '.join(swept)}")
            with registering():
                broker_url = stack.enter_context(rabbitmq_vhost(prefix="batchapp-bench"))
                vhost = broker_url.rsplit("/", 1)[1]
                guard.tell("vhost", vhost)
            progress(f"vhost {vhost}, folder {root}")
            bench = Bench(quick=quick, root=root, broker_url=broker_url, guard=guard)
            for module in measures:
                size = module.QUICK if quick else module.FULL
                try:
                    bench.record(module.measure(bench, size))
                except Exception as exc:
                    # One broken measure must not hide the others' figures; it fails the run.
                    errors[module.NAME] = f"{type(exc).__name__}: {exc}"
                    progress(f"{module.NAME} failed:\n{traceback.format_exc()}")
            bench.figures["locked_in_all_logs"] = sum(v.locked_in_logs() for v in bench.variants)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    guard.release()
    figures = bench.figures
    figures["sizes"] = {m.NAME: m.QUICK if quick else m.FULL for m in measures}
    targets = [
        target
        for module in measures
        if module.NAME not in errors
        for target in module.targets(figures, quick)
    ]
    targets += [
        Target(name, f"error: {one_line(text)}", "-", passed=False) for name, text in errors.items()
    ]
    figures |= {
        "quick": quick,
        "notes": bench.notes,
        "errors": errors,
        "targets": [target.__dict__ for target in targets],
        "missed": [t.measure for t in targets if t.passed is False],
        "wall_s": time.monotonic() - started,
    }
    # The spreads last: the headline figures come first when a person reads the JSON.
    figures["spread"] = figures.pop("spread")
    return figures


def one_line(text: str, width: int = 100) -> str:
    """The last line of an error (a client's traceback ends with its exception), shortened."""
    last = text.strip().splitlines()[-1] if text.strip() else "?"
    return last if len(last) <= width else last[: width - 3] + "..."


def rounded(value: Any) -> Any:
    """Three decimals everywhere in the JSON, recursively."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def render_table(figures: JSONDict) -> str:
    header = ("measure", "batchapp", "reference", "ratio", "target", "result")
    lines = [
        (
            t["measure"],
            t["value"],
            t["reference"],
            "-" if t["ratio"] is None else f"{t['ratio']:.2f}",
            t["target"],
            {True: "PASS", False: "MISS", None: "-"}[t["passed"]],
        )
        for t in figures["targets"]
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        for cells in [header, *lines]
    ]
    mode = "quick" if figures["quick"] else "full"
    text.append(f"({mode} run, {figures['wall_s']:.0f} s)")
    text += [f"note: {note}" for note in figures["notes"]]
    return "\n".join(line.rstrip() for line in text)


def run_client(module_name: str, params: JSONDict) -> None:
    """The caller side of one measure, in this (child) process: its figures as one JSON line."""
    module = importlib.import_module(module_name)
    figures = module.client(params)
    # Linux reports ru_maxrss in KiB: this process's own peak, for the import RSS measure.
    figures["client_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(figures))


def main(argv: Sequence[str] | None = None) -> int:
    names = [m.NAME for m in MEASURES]
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (the test suite's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", help=f"comma-separated measures: {','.join(names)}")
    parser.add_argument("--timeout", type=int, help="stop everything after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the folder with every log")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        run_client(args.client, json.loads(args.params))
        return 0
    chosen = [name.strip() for name in args.only.split(",")] if args.only else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown measure(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    stop_on_signals()
    if args.timeout:
        signal.alarm(args.timeout)
    figures = rounded(run([m for m in MEASURES if m.NAME in chosen], args.quick, args.keep))
    signal.alarm(0)
    print(json.dumps(figures, indent=2) if args.json else render_table(figures))
    for name in figures["missed"]:
        progress(f"target missed: {name}")
    return 1 if figures["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
