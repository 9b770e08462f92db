"""The sales report's run time at two table sizes, with the same number of rows added since its
last run: a run folds in only the new rows (batchapp/jobs/sales_report.py), so its time must
follow them, not the table.

Ledger only (no broker: the measure is the report's): the client fills ``sales`` with synthetic
rows (12 stores over two years; the added rows fall in the last week, as new sales do), runs the
report once to fold them in and once more after adding ``added`` rows (untimed), then
``repeats`` times adds ``added`` rows and times one report job, submit to succeeded. It grows
the same table from the small size to the large one. The reference is the report as it was, a
full recompute of ``sales_daily`` (timed at the small size in a transaction rolled back), on
SQLite and on PostgreSQL. On PostgreSQL the table is vacuumed after the bulk load and its first
fold, as autovacuum would.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import date, datetime, timedelta
from typing import Any

from harness import Bench, JSONDict, Target, progress, ratio, timing

from tests.support import postgres_database

NAME = "report"
FULL = {"sizes": [1_000_000, 4_000_000], "added": 10_000, "repeats": 5}
QUICK = {"sizes": [40_000, 160_000], "added": 2_000, "repeats": 5}
DATABASES = ("sqlite", "postgresql")
# At the large size a run may take this much longer than at the small one.
GROWTH_TARGET = 1.2
FIRST_DAY = date(2024, 12, 1)
DAYS = 730
STORES = [f"{city}-{n:02d}" for city in ("SEOUL", "BUSAN", "INCHEON") for n in range(1, 5)]
BATCH = 50_000


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    small, large = size["sizes"]
    out: JSONDict = {}
    for database in DATABASES:
        progress(f"report on {database}: {small:,} then {large:,} rows, +{size['added']:,} each")
        if database == "sqlite":
            out[database] = bench.variant(f"report-{database}").client(__name__, **size)
        else:
            with postgres_database("batchapp_bench") as url:
                variant = bench.variant(f"report-{database}", BATCHAPP_DATABASE_URL=url)
                out[database] = variant.client(__name__, **size)
    ratios: JSONDict = {}
    for database in DATABASES:
        f = out[database]
        ratios[f"report_{database}_large_over_small"] = ratio(f["large_s"], f["small_s"])
        ratios[f"report_{database}_small_over_recompute"] = ratio(f["small_s"], f["recompute_s"])
    return {"report": out, "ratios": ratios}


def client(params: JSONDict) -> JSONDict:
    from sqlalchemy import text

    from batchapp.jobs import JobContext
    from batchapp.settings import load
    from batchapp.storage.engines import engine_for
    from batchapp.storage.tables import ensure_schema

    settings = load()
    ctx = JobContext(settings=settings, engine=engine_for(settings.database_url))
    ensure_schema(ctx.engine)
    small, large = params["sizes"]
    rng = random.Random(1)
    filled = 0
    times: dict[int, list[float]] = {}
    recompute_s = 0.0
    for size in (small, large):
        filled = fill(ctx.engine, rng, filled, size - filled, recent=False)
        first = run_report(ctx)  # folds in what fill added, untimed
        if ctx.engine.dialect.name == "postgresql":
            # What autovacuum does after a bulk load and its first fold: the timed runs see
            # the table as it usually is, not with millions of just-dead row versions.
            with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("VACUUM ANALYZE sales"))
        progress(f"{size:,} rows filled, first fold {first:.2f} s")
        if size == small:
            with ctx.engine.connect() as connection:
                connection.begin()
                started = time.perf_counter()
                full_recompute(connection)
                recompute_s = time.perf_counter() - started
                connection.rollback()
        times[size] = []
        # One untimed round first: the first fold of millions of rows leaves SQLite a large WAL
        # to checkpoint, which the next commit would pay; a run every minute never sees that.
        for repeat in range(params["repeats"] + 1):
            filled = fill(ctx.engine, rng, filled, params["added"], recent=True)
            took = run_report(ctx)
            if repeat:
                times[size].append(took)
    return {
        "rows": [small, large],
        "added": params["added"],
        "small_s": statistics.median(times[small]),
        "large_s": statistics.median(times[large]),
        "recompute_s": recompute_s,
        "samples_s": {str(size): samples for size, samples in times.items()},
    }


def run_report(ctx: Any) -> float:
    """One report job through the ledger, submit to succeeded; seconds."""
    from batchapp import ledger

    started = time.perf_counter()
    view = ledger.submit(ctx, "report", {}, lambda *_: None)
    ledger.run_chunk(ctx, view.id, 0)
    took = time.perf_counter() - started
    done = ledger.get(ctx, view.id)
    if done.status != "succeeded":
        raise RuntimeError(f"report: {done.status} {done.error}")
    return took


def fill(engine: Any, rng: random.Random, start: int, count: int, recent: bool) -> int:
    """Add ``count`` synthetic sales rows (ids from ``start``); the new total."""
    from batchapp.storage.engines import placeholder, write_transaction

    names = (
        "order_id, sold_at, sold_on, store, sku, quantity, unit_price_cents, amount_cents, "
        "job_id, line"
    )
    first = DAYS - 7 if recent else 0
    for at in range(start, start + count, BATCH):
        rows = []
        for i in range(at, min(at + BATCH, start + count)):
            day = FIRST_DAY + timedelta(days=rng.randrange(first, DAYS))
            quantity, price = rng.randrange(1, 20), rng.randrange(50, 30000)
            sold_at = datetime.combine(day, datetime.min.time()) + timedelta(
                seconds=rng.randrange(86400)
            )
            rows.append(
                (
                    f"B-{i:010d}",
                    sold_at,
                    day,
                    rng.choice(STORES),
                    f"SKU-{rng.randrange(1, 500):04d}",
                    quantity,
                    price,
                    quantity * price,
                    "bench",
                    i + 2,
                )
            )
        with write_transaction(engine) as connection:
            if engine.dialect.name == "postgresql":
                driver: Any = connection.connection.driver_connection
                with (
                    driver.cursor() as cursor,
                    cursor.copy(f"COPY sales ({names}) FROM STDIN") as c,
                ):
                    for row in rows:
                        c.write_row(row)
            else:
                marks = ", ".join(placeholder(engine) for _ in range(10))
                sqlite_rows = [
                    (*r[:1], r[1].isoformat(" "), r[2].isoformat(), *r[3:]) for r in rows
                ]
                connection.exec_driver_sql(
                    f"INSERT INTO sales ({names}) VALUES ({marks})", sqlite_rows
                )
    return start + count


def full_recompute(connection: Any) -> None:
    """The report as it was before it folded rows in: every row, every run."""
    from sqlalchemy import DateTime, delete, func, insert, literal, select

    from batchapp.jobs.base import utcnow
    from batchapp.storage.tables import sales, sales_daily

    totals = select(
        sales.c.sold_on,
        sales.c.store,
        func.count(),
        func.sum(sales.c.quantity),
        func.sum(sales.c.amount_cents),
        literal(utcnow(), DateTime()),
    ).group_by(sales.c.sold_on, sales.c.store)
    connection.execute(delete(sales_daily))
    connection.execute(
        insert(sales_daily).from_select(
            ["day", "store", "orders", "units", "revenue_cents", "updated_at"], totals
        )
    )


def targets(f: JSONDict, quick: bool) -> list[Target]:
    rows: list[Target] = []
    for database in DATABASES:
        r = f["report"][database]
        small, large = r["rows"]
        growth = Target(
            f"report, {database}, {large:,} rows vs {small:,}, +{r['added']:,} rows since",
            f"{r['large_s'] * 1000:.0f} ms",
            f"{r['small_s'] * 1000:.0f} ms",
            f["ratios"][f"report_{database}_large_over_small"],
        )
        against = Target(
            f"report, {database}, {small:,} rows, +{r['added']:,} since, vs full recompute",
            f"{r['small_s'] * 1000:.0f} ms",
            f"recompute {r['recompute_s'] * 1000:.0f} ms",
            f["ratios"][f"report_{database}_small_over_recompute"],
        )
        rows += [timing(growth, "<=", GROWTH_TARGET, quick), timing(against, "<=", 1.0, quick)]
    return rows
