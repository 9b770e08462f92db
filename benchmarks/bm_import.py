"""``import_csv`` rows/s against a raw sqlite3 load, and peak RSS at two file sizes."""

from __future__ import annotations

import csv
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import Bench, JSONDict, Target, exact, progress, ratio, timing

from batchapp.storage.tables import metadata

NAME = "import"
FULL = {"rows": 1_000_000, "rows_large": 4_000_000}
QUICK = {"rows": 60_000, "rows_large": 240_000}
RAW_BATCH_ROWS = 20_000


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    rows, large = size["rows"], size["rows_large"]
    runs = {"rows_1m": import_once(bench, rows), "rows_4m": import_once(bench, large)}
    progress(f"import: raw sqlite3 reference, {rows:,} rows")
    raw_s = raw_sqlite_import(bench.sample(rows), bench.root / "raw" / "raw.sqlite")
    rates = {
        "batchapp": rows / runs["rows_1m"]["seconds"],
        "raw_sqlite": rows / raw_s,
        "batchapp_large": large / runs["rows_4m"]["seconds"],
    }
    rss = {name: run["rss_mb"]["max"] for name, run in runs.items()}
    return {
        "import_rows_per_s": rates,
        "import_seconds": {
            "batchapp": runs["rows_1m"]["seconds"],
            "raw_sqlite": raw_s,
            "batchapp_large": runs["rows_4m"]["seconds"],
        },
        "import_peak_rss_mb": rss,
        "import_peak_rss_by_process_mb": {name: run["rss_mb"] for name, run in runs.items()},
        "ratios": {
            "import_batchapp_over_raw": ratio(rates["batchapp"], rates["raw_sqlite"]),
            "rss_4m_over_1m": ratio(rss["rows_4m"], rss["rows_1m"]),
        },
    }


def import_once(bench: Bench, rows: int) -> JSONDict:
    """One import on a fresh worker; seconds and the peak RSS of every process involved."""
    variant = bench.variant(f"import-{rows}")
    path = variant.add_file(bench.sample(rows))
    progress(f"import: batchapp import_csv of {rows:,} rows")
    with variant.workers(concurrency=2) as (worker,):
        out = variant.client(__name__, path=path.name)
        main_kb, pool_kb = peak_rss_of_worker(worker.pid)
    if out["status"] != "succeeded" or out["result"]["imported"] != rows:
        raise RuntimeError(f"import of {rows:,} rows did not succeed: {out}")
    rss_mb = {
        "worker_main": main_kb / 1024,
        "pool_max": pool_kb / 1024,
        "client": out["client_maxrss_kb"] / 1024,
    }
    rss_mb["max"] = max(rss_mb.values())
    return {"seconds": out["seconds"], "rss_mb": rss_mb}


def client(params: JSONDict) -> JSONDict:
    """Submit import_csv and wait for the job; seconds from submit to succeeded."""
    from batchapp import ledger
    from batchapp.service import job_context, submit_job

    start = time.perf_counter()
    chunking = {"chunk_rows": params["chunk_rows"]} if "chunk_rows" in params else {}
    view = submit_job("import_csv", {"path": params["path"], **chunking})
    done = ledger.wait(job_context(), view.id, timeout=3600)
    return {
        "seconds": time.perf_counter() - start,
        "status": done.status,
        "result": done.result,
        "error": done.error,
    }


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
    insert = (
        "INSERT INTO sales (order_id, sold_at, sold_on, store, sku, quantity, unit_price_cents, "
        "amount_cents, job_id) VALUES (?,?,?,?,?,?,?,?,?)"
    )
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


def targets(f: JSONDict, quick: bool) -> list[Target]:
    rates, rss, size = f["import_rows_per_s"], f["import_peak_rss_mb"], f["sizes"][NAME]
    speed = Target(
        f"import_csv rows/s ({size['rows']:,} rows)",
        f"batchapp {rates['batchapp']:,.0f}/s",
        f"raw sqlite3 {rates['raw_sqlite']:,.0f}/s",
        f["ratios"]["import_batchapp_over_raw"],
    )
    memory = Target(
        "import peak RSS (largest process)",
        f"{size['rows_large']:,} rows {rss['rows_4m']:.0f} MB",
        f"{size['rows']:,} rows {rss['rows_1m']:.0f} MB",
        f["ratios"]["rss_4m_over_1m"],
    )
    # Peak memory does not depend on how busy the machine is: its target holds in quick runs.
    return [timing(speed, ">=", 0.5, quick), exact(memory, "<=", 1.2)]
