"""Declared CSV imports: a team names its file's columns and its table, and gets a job.

    from batchapp import CsvColumn, CsvDecimal, CsvInt, CsvText, csv_import

    orders = csv_import(
        "acme.orders",
        table="acme_orders",
        columns=[
            CsvColumn("id", CsvText(max_len=32), key=True),
            CsvColumn("qty", CsvInt(min=1)),
            CsvColumn("price", CsvDecimal(places=2)),
        ],
    )

Submitting (``path=FILE`` inside ``BATCHAPP_DATA_DIR``, ``chunk_rows=N``) checks the header and
scans the file once for line boundaries (constant memory), planning chunks of ``chunk_rows``
lines by byte offset so a worker reads only its own slice. Good rows land in the table with the
job and line they came from; bad ones in ``batch_import_rejects`` with their line and reason.
The table is created if missing. See :mod:`batchapp.jobs.import_rows` for repeated keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime
from inspect import currentframe
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, inspect
from sqlalchemy.exc import DatabaseError

from batchapp.broker import queues
from batchapp.jobs.base import (
    JSON,
    Chunk,
    ChunkOutcome,
    Job,
    JobContext,
    ParamError,
    check_keys,
    int_param,
    str_param,
)
from batchapp.jobs.csv_rows import MAX_LINE_BYTES, RAW_KEEP, HeaderError, LineParser, read_header
from batchapp.jobs.data_files import FileChanged, plan_line_chunks, read_lines, resolve_data_path
from batchapp.jobs.import_rows import Prepared, storable, write_chunk
from batchapp.jobs.import_spec import CsvColumn, Derived, ImportSpec, check_spec
from batchapp.jobs.registry import JOBS
from batchapp.storage.engines import write_transaction

__all__ = ["FileChanged", "TableImport", "csv_import", "ensure_table", "resolve_data_path"]

_CREATE_ATTEMPTS = 5
# (database URL, table) pairs this process has made sure of.
_created: set[tuple[str, str]] = set()


def ensure_table(engine: Engine, table: Table, job: str) -> None:
    """Create ``table`` if it is missing, once per process and database; an existing table
    that lacks a declared column is a :class:`ParamError` (batchapp never alters it)."""
    key = (engine.url.render_as_string(hide_password=False), table.name)
    if key in _created:
        return
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            with write_transaction(engine) as connection:
                table.create(connection, checkfirst=True)
                present = {c["name"] for c in inspect(connection).get_columns(table.name)}
            break
        except DatabaseError:
            # Another process created it between our check and our CREATE.
            if attempt == _CREATE_ATTEMPTS - 1:
                raise
    missing = [column.name for column in table.columns if column.name not in present]
    if missing:
        raise ParamError(
            f"{job}: table {table.name} exists without column(s) {', '.join(missing)}; "
            "add them or import into another table"
        )
    _created.add(key)


class TableImport(Job):
    """A declared CSV import (see the module docstring); :func:`csv_import` builds one."""

    def __init__(self, spec: ImportSpec, *, summary: str, queue: str = queues.CHUNKS) -> None:
        self.spec = spec
        self.name = spec.job  # type: ignore[misc]
        self.summary = summary  # type: ignore[misc]
        self.params_help = (  # type: ignore[misc]
            "path=FILE (relative to BATCHAPP_DATA_DIR), chunk_rows=INT (default 20000)"
        )
        self.queue = queue  # type: ignore[misc]

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, JSON]:
        check_keys(self.name, raw, {"path", "chunk_rows"})
        root = ctx.settings.data_dir.resolve()
        path = resolve_data_path(root, str_param(self.name, raw, "path"), self.name)
        chunk_rows = int_param(
            self.name, raw, "chunk_rows", default=20_000, minimum=1, maximum=1_000_000
        )
        try:
            stat = path.stat()
            with path.open("rb") as file:
                header = file.readline(MAX_LINE_BYTES + 1)
        except OSError as exc:
            raise ParamError(f"{self.name}: cannot read {path.name}: {exc.strerror}") from None
        if not header:
            raise ParamError(f"{self.name}: {path.name} is empty (expected a header line)")
        if len(header) > MAX_LINE_BYTES:
            raise ParamError(
                f"{self.name}: {path.name}: the header line is longer than {MAX_LINE_BYTES:,} bytes"
            )
        try:
            columns = read_header(header, self.spec.header)
        except HeaderError as exc:
            raise ParamError(f"{self.name}: {path.name}: {exc}") from None
        ensure_table(ctx.engine, self.spec.table, self.name)
        return {
            "path": str(path.relative_to(root)),
            "chunk_rows": chunk_rows,
            "columns": list(columns),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }

    def plan(self, params: dict[str, JSON], ctx: JobContext) -> Iterator[dict[str, JSON]]:
        """Chunks of ``chunk_rows`` lines after the header, found by counting newlines."""
        path = self._open_checked(params, ctx)
        return iter(plan_line_chunks(path, params["chunk_rows"], self.name))

    def prepare(self, params: dict[str, JSON], spec: dict[str, JSON], ctx: JobContext) -> Prepared:
        path = self._open_checked(params, ctx)
        ensure_table(ctx.engine, self.spec.table, self.name)
        sqlite = ctx.engine.dialect.name == "sqlite"
        parse = LineParser(
            spec=self.spec,
            order=tuple(params["columns"]),
            tz=ctx.tz,
            # SQLite stores times as text in SQLAlchemy's format; other drivers take objects.
            to_db_time=_sqlite_datetime if sqlite else _same,
            to_db_date=date.isoformat if sqlite else _same,
        )
        rows: list[tuple[Any, ...]] = []
        rejects: list[tuple[int, str, str]] = []
        with path.open("rb") as file:
            file.seek(spec["offset"])
            for number, raw in read_lines(file, spec["line"], spec["lines"]):
                if isinstance(raw, str):  # the reader already rejected it
                    rejects.append((number, raw, ""))
                    continue
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    rejects.append((number, f"invalid UTF-8 at byte {exc.start}", _keep(raw)))
                    continue
                parsed = parse(text)
                if isinstance(parsed, str):
                    rejects.append((number, parsed, storable(text[:RAW_KEEP])))
                else:
                    rows.append((*parsed, number))
        return Prepared(rows=rows, rejects=rejects)

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        written = write_chunk(connection, self.spec, chunk.job_id, chunk.prepared)
        return ChunkOutcome(
            items_done=written.imported,
            items_failed=written.rejected,
            output={"imported": written.imported, "rejected": written.rejected, "new": written.new},
        )

    def reduce(self, params: dict[str, JSON], outputs: list[JSON]) -> JSON:
        imported = sum(o["imported"] for o in outputs)
        rejected = sum(o["rejected"] for o in outputs)
        new = sum(o["new"] for o in outputs)
        return {
            "rows": imported + rejected,
            "imported": imported,
            "rejected": rejected,
            "new": new,
            "duplicates": imported - new,
        }

    def _open_checked(self, params: dict[str, JSON], ctx: JobContext) -> Path:
        try:
            path = resolve_data_path(ctx.settings.data_dir, params["path"], self.name)
        except ParamError as exc:
            raise FileChanged(str(exc)) from None
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (params["size"], params["mtime_ns"]):
            raise FileChanged(
                f"{self.name}: {params['path']} changed since the job was submitted "
                f"(size {params['size']:,} -> {stat.st_size:,} bytes); submit it again"
            )
        return path

    def __repr__(self) -> str:
        return f"<csv_import {self.name} -> {self.spec.table.name}>"


def csv_import(
    name: str,
    *,
    table: str,
    columns: Iterable[CsvColumn],
    derived: Iterable[Derived] = (),
    summary: str | None = None,
    queue: str = queues.CHUNKS,
    register: bool = True,
) -> TableImport:
    """A job called ``name`` that imports a CSV of ``columns`` into ``table``, registered.

    ``columns`` are :class:`CsvColumn` (exactly one with ``key=True``); ``derived`` are
    :class:`Derived` table columns computed from each row. The table gets the columns plus
    ``batch_job_id`` and ``batch_line`` (which job and line each row came from) and is created
    if missing. A bad declaration raises :class:`DeclarationError` (one line) right here.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"a job name must be a non-empty string without blanks, got {name!r}")
    spec = check_spec(name, table=table, columns=columns, derived=derived)
    made = TableImport(
        spec,
        summary=summary
        or f"load a CSV into {spec.table.name}; bad rows go to batch_import_rejects",
        queue=queue,
    )
    if register:
        JOBS.register(made, JOBS.current_origin(_caller_module()))
    return made


def _caller_module() -> str:
    """The module that called :func:`csv_import`: a job's origin when nothing is loading."""
    frame = currentframe()
    caller = frame.f_back.f_back if frame and frame.f_back else None
    return str(caller.f_globals.get("__name__", "unknown")) if caller else "unknown"


def _keep(raw: bytes) -> str:
    return storable(raw[:RAW_KEEP].decode("utf-8", errors="replace").rstrip("\r\n"))


def _sqlite_datetime(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")


def _same(value: Any) -> Any:
    return value
