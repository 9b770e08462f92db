"""acme.stock: a stock count CSV into the team's own ``acme_stock`` table, declared.

    sku,warehouse,units,unit_cost,counted_at,active
    SKU-0001,ICN-1,40,12.50,2026-12-01T09:00:00,yes

batchapp does the rest: byte-offset chunks, a reject per bad line with its number and reason
(in ``batch_import_rejects``), a SKU repeated in a file rejected naming its first line, each
row written once however often a chunk is delivered. ``value_cents`` is derived per row::

    batchapp submit acme.stock path=stock.csv --wait
"""

from __future__ import annotations

from batchapp import (
    CsvBool,
    CsvColumn,
    CsvDecimal,
    CsvInt,
    CsvText,
    CsvTimestamp,
    Derived,
    csv_import,
)

TABLE = "acme_stock"

stock = csv_import(
    "acme.stock",
    table=TABLE,
    columns=[
        CsvColumn("sku", CsvText(max_len=32, pattern=r"SKU-[0-9]{4}"), key=True),
        CsvColumn("warehouse", CsvText(max_len=16)),
        CsvColumn("units", CsvInt(min=0, max=1_000_000)),
        CsvColumn("unit_cost", CsvDecimal(places=2, max="100000.00")),
        # Without an offset, read in BATCHAPP_TIMEZONE.
        CsvColumn("counted_at", CsvTimestamp()),
        CsvColumn("active", CsvBool(), optional=True),
    ],
    # unit_cost arrives in cents (its minor units), so the value is exact.
    derived=[Derived("value_cents", CsvInt(min=0), lambda row: row["units"] * row["unit_cost"])],
    summary="load a stock count CSV into acme_stock",
)
