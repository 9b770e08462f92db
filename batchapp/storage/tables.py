"""The batchapp database: the job ledger, and the tables batch jobs write.

Tables are created on first use. Later versions only ever add tables and nullable columns,
which :func:`ensure_schema` adds in place, so upgrading never loses data.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    inspect,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DatabaseError
from sqlalchemy.types import TypeEngine

from batchapp.storage.engines import write_transaction


class ExactJSON(TypeDecorator[Any]):
    """JSON whose integers come back exact on SQLite too.

    A column declared JSON has numeric affinity on SQLite, which turns the text of an integer
    past 64 bits into a REAL. A BLOB is never converted, so on SQLite the JSON text is bound
    as bytes; numbers an older version stored as INTEGER or REAL are read as they are.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(Text() if dialect.name == "sqlite" else JSON())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name != "sqlite" or value is None:
            return value
        return json.dumps(value, separators=(",", ":")).encode()

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "sqlite" and isinstance(value, bytes | str):
            return json.loads(value)
        return value


metadata = MetaData()

KEY_MAX_CHARS = 200
# The job states that hold a key (batchapp/ledger/states.py: RUNNING, SUCCEEDED); literal here
# so the index's predicate is a constant both databases accept, and ON CONFLICT can name it.
LIVE_KEY_STATUSES = ("running", "succeeded")
LIVE_KEY_WHERE = text("status IN ('running', 'succeeded') AND job_key IS NOT NULL")

jobs = Table(
    "batch_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("params", ExactJSON, nullable=False),
    # The legal states and transitions are in batchapp/ledger/states.py.
    Column("status", String(16), nullable=False),
    Column("chunks_total", Integer, nullable=False),
    Column("chunks_done", Integer, nullable=False, default=0),
    Column("chunks_failed", Integer, nullable=False, default=0),
    Column("items_done", BigInteger, nullable=False, default=0),
    Column("items_failed", BigInteger, nullable=False, default=0),
    Column("result", ExactJSON),
    Column("error", Text),
    # A periodic run that must not overlap another run of its job (it holds batch_locks).
    Column("exclusive", Boolean),
    # Timestamps are naive UTC; the CLI shows them in the configured timezone.
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    # The submitter's key (``submit --key``), per job name: see LIVE_KEY_STATUSES below.
    Column("job_key", String(KEY_MAX_CHARS)),
    Index("ix_batch_jobs_created_at", "created_at"),
    Index("ix_batch_jobs_name_status", "name", "status"),
    # The reconciler looks for running jobs that stopped changing.
    Index("ix_batch_jobs_status_updated_at", "status", "updated_at"),
    # At most one running or succeeded job per job name and key, whatever the interleaving:
    # a second submit with the key finds it, a retry that would make a second live job fails.
    Index(
        "ux_batch_jobs_name_key_live",
        "name",
        "job_key",
        unique=True,
        sqlite_where=LIVE_KEY_WHERE,
        postgresql_where=LIVE_KEY_WHERE,
    ),
)

executions = Table(
    "batch_executions",
    metadata,
    # One row per run of a job: its submit, then each retry that set it running again.
    Column("job_id", String(32), primary_key=True),
    Column("number", Integer, primary_key=True),
    # "submit" or "retry".
    Column("started_by", String(16), nullable=False),
    Column("started_at", DateTime, nullable=False),
    # Set, with the rest, by the transition that ends the run (NULL: still running).
    Column("finished_at", DateTime),
    # The job's status when the run ended (succeeded, failed, cancelled, skipped).
    Column("outcome", String(16)),
    Column("chunks_done", Integer),
    Column("chunks_failed", Integer),
    Column("error", Text),
)

chunks = Table(
    "batch_chunks",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("spec", ExactJSON, nullable=False),
    # The legal states and transitions are in batchapp/ledger/states.py.
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    # The broker delivered this chunk again (its worker died or lost its connection).
    Column("redelivered", Boolean, nullable=False, default=False),
    # Deliveries seen, counted only on redeliveries (NULL: delivered once at most).
    Column("deliveries", Integer),
    Column("items_done", BigInteger, nullable=False, default=0),
    Column("items_failed", BigInteger, nullable=False, default=0),
    Column("output", ExactJSON),
    Column("error", Text),
    Column("finished_at", DateTime),
    # Covers the per-status counts a job's totals are derived from, without reading the rows.
    Index("ix_batch_chunks_job_status", "job_id", "status", "items_done", "items_failed"),
)

locks = Table(
    "batch_locks",
    metadata,
    # One row per periodic job while a run is going; it expires if its worker died.
    Column("name", String(64), primary_key=True),
    Column("job_id", String(32), nullable=False),
    Column("expires_at", DateTime, nullable=False),
)

sales = Table(
    "sales",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("sold_at", DateTime, nullable=False),
    # The sale's calendar day in the configured timezone, for the daily report.
    Column("sold_on", Date, nullable=False),
    Column("store", String(32), nullable=False),
    Column("sku", String(32), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price_cents", BigInteger, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("job_id", String(32), nullable=False),
    # The line of the file it came from (NULL for rows imported before this column existed).
    Column("line", BigInteger),
    # Set once the report has added the row into sales_daily; NULL: not yet (a new row, or one
    # whose report columns changed since: see SALES_TRIGGERS).
    Column("folded", Boolean, info={"imported": False}),
    # The rows the next report folds in, whatever the table's size.
    Index(
        "ix_sales_unfolded",
        "folded",
        sqlite_where=text("folded IS NULL"),
        postgresql_where=text("folded IS NULL"),
    ),
)


def _rejects_table(name: str) -> Table:
    """A CSV import's rejected lines: the job, the line, why, and the line's start."""
    return Table(
        name,
        metadata,
        Column("job_id", String(32), primary_key=True),
        Column("line", BigInteger, primary_key=True),
        Column("reason", Text, nullable=False),
        Column("raw", Text, nullable=False),
        # For a key repeated in one file: the line of its first occurrence.
        Column("first_line", BigInteger),
    )


# The sales import's, kept from before declared imports; every declared import shares the other.
sales_rejects = _rejects_table("sales_rejects")
import_rejects = _rejects_table("batch_import_rejects")

sales_daily = Table(
    "sales_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("store", String(32), primary_key=True),
    Column("orders", BigInteger, nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("revenue_cents", BigInteger, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

sales_daily_changes = Table(
    "sales_daily_changes",
    metadata,
    # What folded rows that changed or went away took out of sales_daily (negative), written by
    # SALES_TRIGGERS; the next report applies and removes them.
    Column("day", Date, nullable=False),
    Column("store", String(32), nullable=False),
    Column("orders", BigInteger, nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("revenue_cents", BigInteger, nullable=False),
)

sales_daily_state = Table(
    "sales_daily_state",
    metadata,
    # One row once sales_daily is kept by folding rows in; absent: the next report rebuilds it.
    Column("name", String(32), primary_key=True),
    Column("since", DateTime, nullable=False),
)

# A folded sales row whose report columns change (an import's earlier line taking its key over)
# or that is deleted: its old values go to sales_daily_changes and the row is folded again.
# Inserts fire nothing, so imports pay only for ix_sales_unfolded.
_REPORT_COLUMNS = "sold_on, store, quantity, amount_cents"
_TAKE_OUT = (
    "INSERT INTO sales_daily_changes (day, store, orders, units, revenue_cents) "
    "VALUES (OLD.sold_on, OLD.store, -1, -OLD.quantity, -OLD.amount_cents);"
)
SALES_TRIGGERS = {
    "sqlite": [
        f"CREATE TRIGGER IF NOT EXISTS sales_refold_update AFTER UPDATE OF {_REPORT_COLUMNS} "
        f"ON sales WHEN OLD.folded IS NOT NULL BEGIN {_TAKE_OUT} "
        "UPDATE sales SET folded = NULL WHERE rowid = NEW.rowid; END",
        "CREATE TRIGGER IF NOT EXISTS sales_refold_delete AFTER DELETE ON sales "
        f"WHEN OLD.folded IS NOT NULL BEGIN {_TAKE_OUT} END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION sales_refold() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF OLD.folded IS NOT NULL THEN {_TAKE_OUT} END IF; "
        "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; "
        "NEW.folded := NULL; RETURN NEW; END $$",
        f"CREATE OR REPLACE TRIGGER sales_refold BEFORE UPDATE OF {_REPORT_COLUMNS} OR DELETE "
        "ON sales FOR EACH ROW EXECUTE FUNCTION sales_refold()",
    ],
}

beat_leases = Table(
    "batch_beat_leases",
    metadata,
    # The beat that may send ticks holds this row until expires_at; others stand by.
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("expires_at", DateTime, nullable=False),
)

beat_entries = Table(
    "batch_beat_entries",
    metadata,
    # Beat's schedule state: when each entry last ran, shared by every beat process.
    Column("name", String(255), primary_key=True),
    Column("last_run_at", DateTime, nullable=False),
    Column("total_run_count", BigInteger, nullable=False),
)

beat_sends = Table(
    "batch_beat_sends",
    metadata,
    # Each entry's latest recorded tick until its send is confirmed: a beat that takes over from
    # a leader killed in between sends it (same task id, so the run happens once).
    Column("entry", String(255), primary_key=True),
    Column("task_id", String(64), nullable=False),
    Column("recorded_at", DateTime, nullable=False),
)

SCHEDULE_NAME_MAX_CHARS = 200

schedules = Table(
    "batch_schedules",
    metadata,
    # Operators' schedule entries (`batchapp schedule add`), beside the ones in code.
    Column("name", String(SCHEDULE_NAME_MAX_CHARS), primary_key=True),
    Column("job", String(64), nullable=False),
    # The parameters as given (text from the CLI), checked at add and parsed again at each run.
    Column("params", ExactJSON, nullable=False),
    # Exactly one of the two: every N seconds, or a cron expression in BATCHAPP_TIMEZONE.
    Column("every_s", Float),
    Column("cron", String(100)),
    Column("paused", Boolean, nullable=False),
    # When the entry was added or last resumed: its first run is due one period after this,
    # so a resumed entry does not catch up on the runs its pause skipped.
    Column("since", DateTime, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

schedule_changes = Table(
    "batch_schedule_changes",
    metadata,
    # One row: a counter every change to batch_schedules bumps in its transaction, so the
    # leading beat rereads the entries only when it moved (django-celery-beat's PeriodicTasks).
    Column("name", String(32), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

_prepared: set[str] = set()
_CREATE_ATTEMPTS = 5


def ensure_schema(engine: Engine) -> None:
    """Create missing tables and nullable columns, once per process and database."""
    key = engine.url.render_as_string(hide_password=False)
    if key in _prepared:
        return
    if engine.dialect.name == "sqlite" and _sqlite_schema_complete(engine):
        # Read only: a process starting while another holds SQLite's write lock (a writer
        # paused in its transaction) would otherwise wait for it here, even to read.
        _prepared.add(key)
        return
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            with write_transaction(engine) as connection:
                metadata.create_all(connection)
                _add_missing_columns(connection)
                _add_missing_indexes(connection)
                _add_sales_triggers(connection)
            break
        except DatabaseError:
            # Another process created the same table between our check and our CREATE.
            if attempt == _CREATE_ATTEMPTS - 1:
                raise
    _prepared.add(key)


def _sqlite_schema_complete(engine: Engine) -> bool:
    """Every table, column, index and trigger of the schema is there (SQLite; read only)."""
    with engine.connect() as connection:
        inspector = inspect(connection)
        if not set(metadata.tables) <= set(inspector.get_table_names()):
            return False
        for table in metadata.tables.values():
            columns = {column["name"] for column in inspector.get_columns(table.name)}
            indexes = {index["name"] for index in inspector.get_indexes(table.name)}
            if not {column.name for column in table.columns} <= columns:
                return False
            if not {index.name for index in table.indexes} <= indexes:
                return False
        triggers = connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        ).scalars()
        wanted = {
            found.group(1)
            for statement in SALES_TRIGGERS["sqlite"]
            if (found := re.search(r"CREATE TRIGGER IF NOT EXISTS (\w+)", statement))
        }
        return wanted <= set(triggers)


def _add_sales_triggers(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Replacing a function takes a lock that workers starting at once would contend for.
        found = connection.exec_driver_sql(
            "SELECT 1 FROM pg_trigger WHERE tgname = 'sales_refold' AND tgrelid = 'sales'::regclass"
        ).first()
        if found is not None:
            return
    for statement in SALES_TRIGGERS.get(connection.dialect.name, []):
        connection.exec_driver_sql(statement)


def _add_missing_columns(connection: Connection) -> None:
    inspector = inspect(connection)
    preparer = connection.dialect.identifier_preparer
    for table in metadata.tables.values():
        existing = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in existing:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"table {table.name} lacks the NOT NULL column {column.name}: "
                    "migrate it by hand (batchapp only adds nullable columns)"
                )
            connection.execute(
                text(
                    f"ALTER TABLE {preparer.format_table(table)} "
                    f"ADD COLUMN {preparer.quote(column.name)} "
                    f"{column.type.compile(connection.dialect)}"
                )
            )


def _add_missing_indexes(connection: Connection) -> None:
    inspector = inspect(connection)
    for table in metadata.tables.values():
        existing = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in existing:
                index.create(connection)
