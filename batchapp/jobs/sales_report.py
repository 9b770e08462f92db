"""The sales report kept by folding in rows: a run costs the rows added since the last run.

``sales_daily`` holds per day and store the totals of every ``sales`` row whose ``folded`` is
set. A run adds the rows whose ``folded`` is NULL (found through a partial index), sets it, and
applies ``sales_daily_changes``: what folded rows that were changed or deleted took out (the
triggers in batchapp/storage/tables.py write those and clear the row's ``folded``). Each row
version and each change is counted once, in the transaction that marks it:

- SQLite: the run holds the write lock, so nothing commits between its statements.
- PostgreSQL: one statement takes the changes and marks the rows (one snapshot). A row
  committed later, whatever its place in the key order, is still NULL and is the next run's;
  one being changed while the run marks it makes the run wait for that commit and see its
  new values (READ COMMITTED rechecks ``folded IS NULL`` on the new version).

A re-import adds no rows (ON CONFLICT DO NOTHING), so it costs the next run nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, DateTime, bindparam, delete, func, select, text

from batchapp.storage.tables import sales, sales_daily, sales_daily_changes, sales_daily_state

STATE = "sales_daily"

_UPSERT = """
INSERT INTO sales_daily (day, store, orders, units, revenue_cents, updated_at)
SELECT day, store, sum(orders), sum(units), sum(revenue_cents), :now FROM ({source}) AS delta
WHERE true GROUP BY day, store
ON CONFLICT (day, store) DO UPDATE SET
    orders = sales_daily.orders + excluded.orders,
    units = sales_daily.units + excluded.units,
    revenue_cents = sales_daily.revenue_cents + excluded.revenue_cents,
    updated_at = excluded.updated_at
"""
_NEW = (
    "SELECT sold_on AS day, store, 1 AS orders, quantity AS units, amount_cents AS revenue_cents "
    "FROM sales WHERE folded IS NULL"
)
_CHANGES = "SELECT day, store, orders, units, revenue_cents FROM sales_daily_changes"

_SQLITE = text(_UPSERT.format(source=f"{_NEW} UNION ALL {_CHANGES}"))
_POSTGRESQL = text(
    "WITH changes AS (DELETE FROM sales_daily_changes "
    "RETURNING day, store, orders, units, revenue_cents), "
    "new AS (UPDATE sales SET folded = TRUE WHERE folded IS NULL "
    "RETURNING sold_on AS day, store, 1 AS orders, quantity AS units, "
    "amount_cents AS revenue_cents) "
    + _UPSERT.format(source="SELECT * FROM changes UNION ALL SELECT * FROM new")
    + " RETURNING (SELECT count(*) FROM new)"
)

_PLAN = ("enable_seqscan", "jit")


def fold_sales(connection: Connection, now: datetime) -> int:
    """Fold the rows added or changed since the last run into ``sales_daily``, in the caller's
    (write) transaction; how many rows were folded."""
    if connection.execute(select(sales_daily_state.c.name)).first() is None:
        _start(connection, now)
    at = bindparam("now", now, type_=DateTime())
    if connection.dialect.name == "postgresql":
        # The planner may think most rows unfolded (statistics taken right after an import)
        # and scan the table; the partial index is always the cheaper way. The cost that
        # forbidding the scan adds would make it compile the statement (JIT, about 1 s).
        for setting in _PLAN:
            connection.exec_driver_sql(f"SET LOCAL {setting} = off")
        counts = connection.execute(_POSTGRESQL.bindparams(at)).scalars().all()
        folded = int(counts[0]) if counts else 0
        for setting in _PLAN:
            connection.exec_driver_sql(f"SET LOCAL {setting} TO DEFAULT")
    else:
        connection.execute(_SQLITE.bindparams(at))
        folded = connection.execute(
            sales.update().where(sales.c.folded.is_(None)).values(folded=True)
        ).rowcount
        connection.execute(delete(sales_daily_changes))
    # A day and store whose every row went away has no line, as in a full recompute.
    connection.execute(delete(sales_daily).where(sales_daily.c.orders == 0))
    return folded


def _start(connection: Connection, now: datetime) -> None:
    """Rebuild from nothing: sales_daily was computed by a full recompute before (or never)."""
    connection.execute(delete(sales_daily))
    connection.execute(delete(sales_daily_changes))
    connection.execute(sales.update().where(sales.c.folded.is_not(None)).values(folded=None))
    connection.execute(sales_daily_state.insert().values(name=STATE, since=now))


def recompute(connection: Connection) -> list[tuple[object, ...]]:
    """The totals a full recompute gives, (day, store, orders, units, revenue_cents) in order:
    what ``sales_daily`` must equal after a run."""
    return [
        tuple(row)
        for row in connection.execute(
            select(
                sales.c.sold_on,
                sales.c.store,
                func.count(),
                func.sum(sales.c.quantity),
                func.sum(sales.c.amount_cents),
            )
            .group_by(sales.c.sold_on, sales.c.store)
            .order_by(sales.c.sold_on, sales.c.store)
        )
    ]
