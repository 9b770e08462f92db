"""A team's own table import, declared as a team would: loaded by worker and CLI through
``BATCHAPP_JOBS=tests.acme_tables``, never registered by importing batchapp."""

from __future__ import annotations

from batchapp import (
    CsvBool,
    CsvColumn,
    CsvDate,
    CsvDecimal,
    CsvInt,
    CsvText,
    CsvTimestamp,
    Derived,
    csv_import,
)

orders = csv_import(
    "acme.orders",
    table="acme_orders",
    columns=[
        CsvColumn("id", CsvText(max_len=32, pattern=r"[A-Z0-9-]+"), key=True),
        CsvColumn("qty", CsvInt(min=1, max=1_000)),
        CsvColumn("price", CsvDecimal(places=2, max="10000.00")),
        CsvColumn("placed_at", CsvTimestamp()),
        CsvColumn("due", CsvDate(), optional=True),
        CsvColumn("gift", CsvBool(), optional=True),
        CsvColumn("note", CsvText(max_len=40), optional=True),
    ],
    derived=[Derived("total_cents", CsvInt(min=0), lambda row: row["qty"] * row["price"])],
)
