"""Measure batchapp against plain Celery and plain SQLite references, in one run.

    python benchmarks/run.py            # full sizes (several minutes), a table on stdout
    python benchmarks/run.py --quick    # small sizes, well under a minute
    python benchmarks/run.py --json     # one JSON object on stdout (progress on stderr)

Every measure starts the workers it needs on a RabbitMQ vhost of its own and a temporary data
folder, and stops them afterwards. ``batchapp.celery`` reads its settings once per process, so
the caller side of each variant runs in a child process (``run.py --client NAME``) with that
variant's environment, and prints its figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchapp import processes
from batchapp.queues import CHUNKS
from batchapp.sales_csv import write_sample
from batchapp.tables import metadata
from batchapp.testing import rabbitmq_vhost

SCRIPT = Path(__file__).resolve()
LOCKED = "database is locked"
CLIENT_TIMEOUT_S = 3600.0
RAW_BATCH_ROWS = 20_000

JSONDict = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    rtt_calls: int
    rtt_warmup: int
    tasks: int
    task_reps: int
    sum_runs: int
    group_runs: int
    chord_runs: int
    import_rows: int
    """The "1M rows" size: rows/s against raw SQLite, and peak RSS."""
    import_rows_large: int
    """The "4M rows" size: peak RSS only."""
    submit_items: int
    submit_chunk_size: int
    load_seconds: float


FULL = Sizes(
    rtt_calls=200,
    rtt_warmup=10,
    tasks=2000,
    task_reps=5,
    sum_runs=30,
    group_runs=30,
    chord_runs=5,
    import_rows=1_000_000,
    import_rows_large=4_000_000,
    submit_items=1_000_000,
    submit_chunk_size=10_000,
    load_seconds=20.0,
)
QUICK = Sizes(
    rtt_calls=30,
    rtt_warmup=5,
    tasks=300,
    task_reps=2,
    sum_runs=10,
    group_runs=10,
    chord_runs=2,
    import_rows=20_000,
    import_rows_large=80_000,
    submit_items=1_000_000,
    submit_chunk_size=10_000,
    load_seconds=4.0,
)


# -- figures ---------------------------------------------------------------------------------


def spread(samples: Sequence[float]) -> JSONDict:
    """Median with p10/p90 and min/max, so a reader sees how noisy a figure is."""
    ordered = sorted(samples)
    deciles = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else []
    return {
        "median": statistics.median(ordered),
        "p10": deciles[0] if deciles else ordered[0],
        "p90": deciles[-1] if deciles else ordered[0],
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def rounded(value: Any) -> Any:
    """Three significant decimals everywhere in the JSON, recursively."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def progress(message: str) -> None:
    # stderr, so that --json keeps stdout for the one JSON object.
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- orchestration (parent process) ------------------------------------------------------------


@dataclass
class Variant:
    """One configuration: its own data folder and the environment its processes get."""

    name: str
    data_dir: Path
    env: dict[str, str]

    @contextlib.contextmanager
    def workers(
        self, count: int = 1, concurrency: int = 2, extra: Sequence[str] = ()
    ) -> Iterator[list[processes.CeleryProcess]]:
        """``count`` workers with this variant's environment, always stopped afterwards."""
        started: list[processes.CeleryProcess] = []
        try:
            for number in range(1, count + 1):
                started.append(
                    processes.worker(
                        self.env,
                        self.data_dir / "logs" / f"worker{number}.log",
                        concurrency=concurrency,
                        hostname=f"bench{number}@%h",
                        extra=extra,
                    )
                )
            for worker in started:
                worker.wait_ready()
            yield started
        finally:
            for worker in started:
                worker.stop()

    def client(self, measure: str, **params: Any) -> JSONDict:
        """Run ``run.py --client MEASURE`` with this variant's environment; its JSON output."""
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--client", measure, "--params", json.dumps(params)],
            env=self.env,
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"client {measure} ({self.name}) exited with {done.returncode}:\n"
                f"{done.stderr[-4000:]}"
            )
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        figures: JSONDict = json.loads(lines[-1])
        figures["stderr_locked"] = done.stderr.count(LOCKED)
        return figures

    def locked_in_logs(self) -> int:
        return sum(
            path.read_text(errors="replace").count(LOCKED)
            for path in (self.data_dir / "logs").glob("*.log")
        )


@dataclass
class Bench:
    """One benchmark run: sizes, a vhost, a temporary folder, and the figures so far."""

    sizes: Sizes
    quick: bool
    root: Path
    broker_url: str
    figures: JSONDict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)

    def variant(self, name: str, **settings: str) -> Variant:
        """A fresh data folder; inherited BATCHAPP_* variables never reach the children."""
        data_dir = self.root / name
        data_dir.mkdir(parents=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith("BATCHAPP_")}
        env |= {
            "BATCHAPP_BROKER_URL": self.broker_url,
            "BATCHAPP_DATA_DIR": str(data_dir),
            "BATCHAPP_DATABASE_URL": f"sqlite:///{data_dir / 'batchapp.sqlite'}",
            **settings,
        }
        variant = Variant(name, data_dir, env)
        self.variants.append(variant)
        return variant


RTT_TURNS = 3


def measure_rtt(bench: Bench) -> None:
    """delay(100).get() round trips: the SQLite result backend against rpc://.

    The variants take turns (sqlite, rpc, sqlite, rpc, ...), each turn with fresh workers, so
    a machine that is slower for a while slows both and the first variant is not favoured.
    """
    sizes = bench.sizes
    collected: dict[str, list[float]] = {"sqlite": [], "rpc": []}
    for turn in range(RTT_TURNS):
        for name, settings in (("sqlite", {}), ("rpc", {"BATCHAPP_RESULT_BACKEND": "rpc://"})):
            progress(f"rtt: {name} result backend, turn {turn + 1}, {sizes.rtt_calls} calls")
            variant = bench.variant(f"rtt-{name}-{turn}", **settings)
            with variant.workers(concurrency=2):
                out = variant.client("rtt", calls=sizes.rtt_calls, warmup=sizes.rtt_warmup)
            collected[name] += out["samples_ms"]
    samples = {name: spread(values) for name, values in collected.items()}
    bench.figures["rtt_ms"] = {name: s["median"] for name, s in samples.items()}
    bench.figures["spread"]["rtt_ms"] = samples


def measure_tasks_per_s(bench: Bench) -> None:
    """Throughput of N trivial tasks, results stored in SQLite against results off."""
    sizes = bench.sizes
    progress(f"tasks_per_s: {sizes.tasks} tasks x {sizes.task_reps} reps per variant")
    variant = bench.variant("tasks")
    # -E: both variants count task-succeeded events to see the last task finish.
    with variant.workers(concurrency=2, extra=("-E",)):
        out = variant.client("tasks", count=sizes.tasks, reps=sizes.task_reps)
    rates = {name: spread(values) for name, values in out["rates"].items()}
    bench.figures["tasks_per_s"] = {name: s["median"] for name, s in rates.items()}
    bench.figures["spread"]["tasks_per_s"] = rates
    bench.figures["tasks_check"] = out["check"]


def measure_parallel_sum(bench: Bench) -> None:
    """A 10-chunk parallel_sum through the ledger against a group and a chord of 10 tasks."""
    sizes = bench.sizes
    progress(f"parallel_sum_10: {sizes.sum_runs} jobs, {sizes.group_runs} groups, chords")
    variant = bench.variant("parallel-sum")
    with variant.workers(concurrency=2):
        out = variant.client(
            "parallel_sum",
            runs=sizes.sum_runs,
            group_runs=sizes.group_runs,
            chord_runs=sizes.chord_runs,
        )
    job, group = spread(out["job_ms"]), spread(out["group_ms"])
    chord = spread(out["chord_ms"]) if out["chord_ms"] else None
    bench.figures["parallel_sum_10_ms"] = job["median"]
    bench.figures["group_10_ms"] = group["median"]
    bench.figures["chord_10_ms"] = chord["median"] if chord else None
    bench.figures["spread"] |= {"parallel_sum_10_ms": job, "group_10_ms": group}
    bench.figures["spread"]["chord_10_ms"] = chord
    if out.get("chord_error"):
        bench.notes.append(f"chord_10_ms is null: {out['chord_error']}")


def measure_submit_messages(bench: Bench) -> None:
    """With no worker, a job of many items must publish one message per chunk."""
    sizes = bench.sizes
    progress(
        f"submit_messages: {sizes.submit_items:,} items, chunk_size {sizes.submit_chunk_size:,}"
    )
    variant = bench.variant("submit")
    out = variant.client("submit", items=sizes.submit_items, chunk_size=sizes.submit_chunk_size)
    bench.figures["submit_messages"] = {
        "items": sizes.submit_items,
        "chunks": out["chunks"],
        "messages": out["messages"],
        "submit_ms": out["submit_ms"],
    }


def measure_import(bench: Bench) -> None:
    """import_csv rows/s against a raw sqlite3 load, and peak RSS at two file sizes."""
    sizes = bench.sizes
    runs = {
        "rows_1m": import_once(bench, "import-1m", sizes.import_rows),
        "rows_4m": import_once(bench, "import-4m", sizes.import_rows_large),
    }
    progress(f"import: raw sqlite3 reference, {sizes.import_rows:,} rows")
    raw_s = raw_sqlite_import(runs["rows_1m"]["csv"], bench.root / "raw" / "raw.sqlite")
    bench.figures["import_rows_per_s"] = {
        "batchapp": sizes.import_rows / runs["rows_1m"]["seconds"],
        "raw_sqlite": sizes.import_rows / raw_s,
        "batchapp_large": sizes.import_rows_large / runs["rows_4m"]["seconds"],
    }
    bench.figures["import_seconds"] = {
        "batchapp": runs["rows_1m"]["seconds"],
        "raw_sqlite": raw_s,
        "batchapp_large": runs["rows_4m"]["seconds"],
    }
    bench.figures["import_peak_rss_mb"] = {size: run["rss_mb"]["max"] for size, run in runs.items()}
    bench.figures["import_peak_rss_by_process_mb"] = {
        size: run["rss_mb"] for size, run in runs.items()
    }


def import_once(bench: Bench, name: str, rows: int) -> JSONDict:
    """One import on a fresh worker; seconds and the peak RSS of every process involved."""
    variant = bench.variant(name)
    csv_path = variant.data_dir / f"sales-{rows}.csv"
    progress(f"import: writing a {rows:,}-row sample")
    write_sample(csv_path, rows)
    progress(f"import: batchapp import_csv of {rows:,} rows")
    with variant.workers(concurrency=2) as workers:
        out = variant.client("import", path=csv_path.name, rows=rows)
        main_kb, pool_kb = peak_rss_of_worker(workers[0].pid)
    if out["status"] != "succeeded" or out["result"]["imported"] != rows:
        raise RuntimeError(f"import of {rows:,} rows did not succeed: {out}")
    rss_mb = {
        "worker_main": main_kb / 1024,
        "pool_max": pool_kb / 1024,
        "client": out["client_maxrss_kb"] / 1024,
    }
    rss_mb["max"] = max(rss_mb.values())
    return {"seconds": out["seconds"], "rss_mb": rss_mb, "csv": csv_path}


def peak_rss_of_worker(pid: int) -> tuple[int, int]:
    """(main process, largest pool child) VmHWM in KiB, read while the worker still runs."""
    children = [peak_rss_kb(child) for child in child_pids(pid)]
    return peak_rss_kb(pid), max(children, default=0)


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended while we looked
    return found


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise LookupError(f"no VmHWM for pid {pid}")


def raw_sqlite_import(csv_path: Path, db_path: Path) -> float:
    """Seconds for a plain single-process sqlite3 load of the file: the ceiling to compare to."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    create_schema(db_path)
    connection = sqlite3.connect(db_path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    insert = "INSERT INTO sales VALUES (?,?,?,?,?,?,?,?,?)"
    start = time.perf_counter()
    with csv_path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        next(reader)
        batch: list[tuple[Any, ...]] = []
        for fields in reader:
            batch.append(raw_sales_row(fields))
            if len(batch) == RAW_BATCH_ROWS:
                insert_batch(connection, insert, batch)
                batch = []
        if batch:
            insert_batch(connection, insert, batch)
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed


def create_schema(db_path: Path) -> None:
    """The same tables and indexes batchapp creates, from its own metadata."""
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{db_path}")
    metadata.create_all(engine)
    engine.dispose()


def raw_sales_row(fields: list[str]) -> tuple[Any, ...]:
    """The sales columns from one sample line, unvalidated (write_sample writes COLUMNS order)."""
    order_id, sold_at, store, sku, quantity_text, price = fields
    moment = datetime.fromisoformat(sold_at)
    sold_at_utc = moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    whole, _, fraction = price.partition(".")
    unit_cents = int(whole) * 100 + int(fraction.ljust(2, "0"))
    quantity = int(quantity_text)
    # The sample's offsets are Asia/Seoul's, so the local day is the text's own date.
    row = (order_id, sold_at_utc, sold_at[:10], store, sku, quantity, unit_cents)
    return (*row, unit_cents * quantity, "raw")


def insert_batch(connection: sqlite3.Connection, insert: str, batch: list[tuple[Any, ...]]) -> None:
    connection.execute("BEGIN")
    connection.executemany(insert, batch)
    connection.execute("COMMIT")


def measure_locked_errors(bench: Bench) -> None:
    """Four pool processes writing results and ledger rows to the same SQLite files."""
    seconds = bench.sizes.load_seconds
    progress(f"locked_errors: 2 workers x 2 processes under load for {seconds:g} s")
    variant = bench.variant("locked")
    with variant.workers(count=2, concurrency=2):
        out = variant.client("load", seconds=seconds)
    in_logs = variant.locked_in_logs()
    failed = out["failed_jobs_locked"] + out["failed_tasks_locked"]
    bench.figures["locked_errors"] = in_logs + failed + out["stderr_locked"]
    bench.figures["locked_detail"] = {
        "in_worker_logs": in_logs,
        "failed_jobs_or_tasks": failed,
        "in_client_stderr": out["stderr_locked"],
        "jobs": out["jobs"],
        "chunks": out["chunks"],
        "tasks": out["tasks"],
        "other_failures": out["other_failures"][:5],
    }


MEASURES: tuple[Callable[[Bench], None], ...] = (
    measure_rtt,
    measure_tasks_per_s,
    measure_parallel_sum,
    measure_submit_messages,
    measure_locked_errors,
    measure_import,
)


def run_all(sizes: Sizes, quick: bool) -> JSONDict:
    """Every measure on one vhost and one temporary folder, both removed afterwards."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="batchapp-bench-"))
    try:
        # Workers start in the current folder, where settings would read a stray .env file.
        with contextlib.chdir(root), rabbitmq_vhost(prefix="batchapp-bench") as broker_url:
            bench = Bench(sizes=sizes, quick=quick, root=root, broker_url=broker_url)
            bench.figures["spread"] = {}
            for measure in MEASURES:
                measure(bench)
            # Every log of the run, not only the load test's: a lock error anywhere counts.
            bench.figures["locked_in_all_worker_logs"] = sum(
                variant.locked_in_logs() for variant in bench.variants
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = bench.figures
    figures["ratios"] = ratios(figures)
    figures |= {"quick": quick, "sizes": asdict(sizes), "notes": bench.notes}
    figures["wall_s"] = time.monotonic() - started
    # The spreads last: the headline figures come first when a person reads the JSON.
    figures["spread"] = figures.pop("spread")
    return figures


def ratios(figures: JSONDict) -> JSONDict:
    rss = figures["import_peak_rss_mb"]
    return {
        "rtt_sqlite_over_rpc": ratio(figures["rtt_ms"]["sqlite"], figures["rtt_ms"]["rpc"]),
        "tasks_sqlite_over_no_results": ratio(
            figures["tasks_per_s"]["sqlite_results"], figures["tasks_per_s"]["no_results"]
        ),
        "parallel_sum_over_group": ratio(figures["parallel_sum_10_ms"], figures["group_10_ms"]),
        "parallel_sum_over_chord": ratio(figures["parallel_sum_10_ms"], figures["chord_10_ms"]),
        "import_batchapp_over_raw": ratio(
            figures["import_rows_per_s"]["batchapp"], figures["import_rows_per_s"]["raw_sqlite"]
        ),
        "rss_4m_over_1m": ratio(rss["rows_4m"], rss["rows_1m"]),
        "messages_over_chunks": ratio(
            figures["submit_messages"]["messages"], figures["submit_messages"]["chunks"]
        ),
    }


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    measure: str
    value: str
    reference: str
    ratio: float | None = None
    target: str = "-"
    passed: bool | None = None


def checked(row: Row, op: str, limit: float) -> Row:
    """``row`` with its target, and PASS or MISS when its ratio is known."""
    passed = None
    if row.ratio is not None:
        passed = row.ratio <= limit if op == "<=" else row.ratio >= limit
    return replace(row, target=f"{op} {limit:g}", passed=passed)


def rtt_row(f: JSONDict) -> Row:
    rtt = f["rtt_ms"]
    row = Row(
        "rtt delay(100).get()",
        f"sqlite {rtt['sqlite']:.1f} ms",
        f"rpc {rtt['rpc']:.1f} ms",
        f["ratios"]["rtt_sqlite_over_rpc"],
    )
    return checked(row, "<=", 1.5)


def tasks_row(f: JSONDict) -> Row:
    rates = f["tasks_per_s"]
    row = Row(
        f"tasks/s ({f['sizes']['tasks']} calculate_sum)",
        f"sqlite results {rates['sqlite_results']:.0f}/s",
        f"no results {rates['no_results']:.0f}/s",
        f["ratios"]["tasks_sqlite_over_no_results"],
    )
    return checked(row, ">=", 0.7)


def parallel_sum_row(f: JSONDict) -> Row:
    # The target is absolute (<= 50 ms median); the group and the chord are context.
    chord = f"{f['chord_10_ms']:.0f} ms" if f["chord_10_ms"] else "n/a"
    median = f["parallel_sum_10_ms"]
    return Row(
        "parallel_sum n=100, 10 chunks",
        f"{median:.1f} ms",
        f"group {f['group_10_ms']:.1f} ms, chord {chord}",
        f["ratios"]["parallel_sum_over_group"],
        "<= 50 ms",
        median <= 50,
    )


def import_row(f: JSONDict) -> Row:
    rates = f["import_rows_per_s"]
    row = Row(
        f"import_csv rows/s ({f['sizes']['import_rows']:,} rows)",
        f"batchapp {rates['batchapp']:,.0f}/s",
        f"raw sqlite3 {rates['raw_sqlite']:,.0f}/s",
        f["ratios"]["import_batchapp_over_raw"],
    )
    return checked(row, ">=", 0.5)


def rss_row(f: JSONDict) -> Row:
    rss, sizes = f["import_peak_rss_mb"], f["sizes"]
    row = Row(
        "import peak RSS (largest process)",
        f"{sizes['import_rows_large']:,} rows {rss['rows_4m']:.0f} MB",
        f"{sizes['import_rows']:,} rows {rss['rows_1m']:.0f} MB",
        f["ratios"]["rss_4m_over_1m"],
    )
    return checked(row, "<=", 1.2)


def submit_row(f: JSONDict) -> Row:
    sent = f["submit_messages"]
    return Row(
        f"queued messages ({sent['items']:,} items)",
        f"{sent['messages']} messages",
        f"{sent['chunks']} chunks",
        f["ratios"]["messages_over_chunks"],
        "== chunks",
        sent["messages"] == sent["chunks"],
    )


def locked_row(f: JSONDict) -> Row:
    load = f["locked_detail"]
    return Row(
        "'database is locked' under load",
        str(f["locked_errors"]),
        f"{load['jobs']} jobs, {load['chunks']} chunks, {load['tasks']} tasks",
        None,
        "== 0",
        f["locked_errors"] == 0,
    )


TABLE_ROWS = (rtt_row, tasks_row, parallel_sum_row, import_row, rss_row, submit_row, locked_row)


def render_table(figures: JSONDict) -> str:
    header = ("measure", "batchapp", "reference", "ratio", "target", "result")
    lines = [
        (
            row.measure,
            row.value,
            row.reference,
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            row.target,
            {True: "PASS", False: "MISS", None: "-"}[row.passed],
        )
        for row in (make(figures) for make in TABLE_ROWS)
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


# -- clients (child processes, with a variant's environment) ----------------------------------


def client_rtt(params: JSONDict) -> JSONDict:
    """calculate_sum.delay(100).get() with get()'s default arguments, timed call by call."""
    from batchapp.tasks import calculate_sum

    for _ in range(params["warmup"]):
        calculate_sum.delay(100).get()
    samples = []
    for _ in range(params["calls"]):
        start = time.perf_counter()
        value = calculate_sum.delay(100).get()
        samples.append((time.perf_counter() - start) * 1000)
        if value != 5050:
            raise RuntimeError(f"calculate_sum(100) returned {value!r}")
    return {"samples_ms": samples}


class SucceededEvents:
    """Notes when every expected task id has sent its task-succeeded event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expected: set[str] = set()
        self._all_seen = threading.Event()
        self.finished_at = 0.0
        self.worker_heard = threading.Event()

    def expect(self, task_ids: Sequence[str]) -> None:
        with self._lock:
            self._expected = set(task_ids)
            self._all_seen.clear()

    def on_succeeded(self, event: JSONDict) -> None:
        now = time.perf_counter()
        with self._lock:
            if event.get("uuid") not in self._expected:
                return
            self._expected.discard(event["uuid"])
            if not self._expected:
                self.finished_at = now
                self._all_seen.set()

    def on_heartbeat(self, event: JSONDict) -> None:
        self.worker_heard.set()

    def wait(self, timeout: float) -> float:
        """perf_counter() at the last expected event."""
        if not self._all_seen.wait(timeout):
            raise TimeoutError(f"{len(self._expected)} task-succeeded events missing")
        return self.finished_at


@contextlib.contextmanager
def succeeded_events(app: Any) -> Iterator[SucceededEvents]:
    """An event receiver in a thread, known to be consuming before this yields."""
    events = SucceededEvents()
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(
            connection,
            handlers={
                "task-succeeded": events.on_succeeded,
                "worker-heartbeat": events.on_heartbeat,
            },
        )
        # wakeup=True asks the workers for a heartbeat once our queue is bound and consumed:
        # hearing it proves the receiver sees events, without a guessed sleep.
        thread = threading.Thread(
            target=receiver.capture,
            kwargs={"limit": None, "timeout": None, "wakeup": True},
            daemon=True,
        )
        thread.start()
        try:
            if not events.worker_heard.wait(30):
                raise TimeoutError("no worker-heartbeat event within 30 s")
            yield events
        finally:
            receiver.should_stop = True
            thread.join(5)


def client_tasks(params: JSONDict) -> JSONDict:
    """N calculate_sum through one producer, until N task-succeeded events, both variants."""
    from celery import uuid as task_uuid
    from celery.result import ResultSet

    from batchapp.celery import app
    from batchapp.publishing import publish_batch
    from batchapp.sums import sum_to
    from batchapp.tasks import calculate_sum

    count = params["count"]
    rates: dict[str, list[float]] = {"sqlite_results": [], "no_results": []}
    check: JSONDict = {}
    with succeeded_events(app) as events:
        warmup = task_uuid()
        events.expect([warmup])
        calculate_sum.apply_async((1,), task_id=warmup)
        events.wait(30)
        for rep in range(params["reps"]):
            # Alternate which variant goes first, so drift during the run hits both alike.
            order = [True, False] if rep % 2 == 0 else [False, True]
            for keep in order:
                ids = [task_uuid() for _ in range(count)]
                events.expect(ids)
                options = {} if keep else {"ignore_result": True}
                start = time.perf_counter()

                def publish(
                    producer: Any, ids: list[str] = ids, options: JSONDict = options
                ) -> int:
                    for i, task_id in enumerate(ids):
                        calculate_sum.apply_async(
                            (i,), producer=producer, task_id=task_id, retry=False, **options
                        )
                    return len(ids)

                # Confirmed as one batch: the workers, not 2 ms per confirm, set the pace.
                publish_batch(app, publish)
                elapsed = events.wait(600) - start
                rates["sqlite_results" if keep else "no_results"].append(count / elapsed)
                results = ResultSet([app.AsyncResult(task_id) for task_id in ids])
                if keep:
                    values = results.join(timeout=120)
                    if values != [sum_to(i) for i in range(count)]:
                        raise RuntimeError("stored results differ from calculate_sum's")
                    check["sqlite_results_all_success"] = all(r.successful() for r in results)
                else:
                    check["no_results_first_state"] = app.AsyncResult(ids[0]).state
    return {"rates": rates, "check": check}


def client_parallel_sum(params: JSONDict) -> JSONDict:
    """parallel_sum through the ledger, a group of 10, and a chord of 10 into celery.accumulate."""
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
        if group([calculate_sum.s(10)] * 10).apply_async().get() != [55] * 10:
            raise RuntimeError("group of 10 calculate_sum(10) did not return [55] * 10")

    def chord_of_10() -> None:
        # celery.accumulate returns its arguments: the header's list comes back as [[55, ...]].
        body = app.signature("celery.accumulate").set(ignore_result=False)
        if chord([calculate_sum.s(10)] * 10)(body).get(timeout=60) != [[55] * 10]:
            raise RuntimeError("chord of 10 into celery.accumulate did not return [[55] * 10]")

    out: JSONDict = {
        "job_ms": timed(job, params["runs"], warmup=2),
        "group_ms": timed(group_of_10, params["group_runs"], warmup=2),
    }
    try:
        out["chord_ms"] = timed(chord_of_10, params["chord_runs"], warmup=1)
    except Exception as exc:
        out["chord_ms"], out["chord_error"] = [], f"{type(exc).__name__}: {exc}"
    return out


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


def client_import(params: JSONDict) -> JSONDict:
    """Submit import_csv and wait for the job; seconds from submit to succeeded."""
    from batchapp import ledger
    from batchapp.tasks import job_context, submit_job

    start = time.perf_counter()
    view = submit_job("import_csv", {"path": params["path"]})
    done = ledger.wait(job_context(), view.id, timeout=CLIENT_TIMEOUT_S)
    return {
        "seconds": time.perf_counter() - start,
        "status": done.status,
        "result": done.result,
        "error": done.error,
    }


def client_submit(params: JSONDict) -> JSONDict:
    """Submit a big parallel_sum with no worker running and count the queued messages."""
    from batchapp.celery import app
    from batchapp.tasks import submit_job

    start = time.perf_counter()
    view = submit_job("parallel_sum", {"n": params["items"], "chunk_size": params["chunk_size"]})
    submit_ms = (time.perf_counter() - start) * 1000
    with app.connection_for_write() as connection:
        _, messages, _ = connection.default_channel.queue_declare(queue=CHUNKS, passive=True)
    app.control.purge()
    return {"chunks": view.chunks_total, "messages": messages, "submit_ms": submit_ms}


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


def client_load(params: JSONDict) -> JSONDict:
    """Two callers submitting many-chunk jobs and two calling calculate_sum, for a while."""
    from batchapp import ledger
    from batchapp.tasks import calculate_sum, job_context, submit_job

    deadline = time.monotonic() + params["seconds"]
    tally = LoadTally()

    def submit_jobs() -> None:
        while time.monotonic() < deadline:
            view = submit_job("parallel_sum", {"n": 400, "chunk_size": 2})
            done = ledger.wait(job_context(), view.id, timeout=300)
            failure = "" if done.status == "succeeded" else f"job {done.status}: {done.error}"
            tally.add(jobs=1, chunks=done.chunks_total, failure=failure)

    def call_tasks() -> None:
        while time.monotonic() < deadline:
            results = [calculate_sum.delay(i) for i in range(50)]
            for result in results:
                try:
                    result.get(timeout=300)
                    tally.add(tasks=1)
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


CLIENTS: dict[str, Callable[[JSONDict], JSONDict]] = {
    "rtt": client_rtt,
    "tasks": client_tasks,
    "parallel_sum": client_parallel_sum,
    "import": client_import,
    "submit": client_submit,
    "load": client_load,
}


def run_client(name: str, params: JSONDict) -> None:
    figures = CLIENTS[name](params)
    # Linux reports ru_maxrss in KiB: this process's own peak, for the import RSS measure.
    figures["client_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(figures))


# -- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (the test suite's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--client", choices=sorted(CLIENTS), help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        run_client(args.client, json.loads(args.params))
        return 0
    figures = rounded(run_all(QUICK if args.quick else FULL, args.quick))
    print(json.dumps(figures, indent=2) if args.json else render_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
