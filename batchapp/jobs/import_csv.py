"""import_csv: stream a sales CSV of any size into the ``sales`` table, chunk by chunk.

Submitting scans the file once for line boundaries (constant memory) and plans chunks of
``chunk_rows`` lines by byte offset, so a worker reads only its own slice. Good rows land in
``sales`` with their line number (an ``order_id`` already there from an earlier import is
skipped, so re-importing adds nothing); bad rows land in ``sales_rejects`` with their line
number and reason.

An ``order_id`` may appear once in a file. Chunks commit in any order, so the row that holds an
id in ``sales`` is always the earliest line committed so far: a chunk that brings an earlier
line takes the id over, and every later line of it is rejected naming the earliest. Whatever
the order, the file's first occurrence wins and the counts come out the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Connection

from batchapp.jobs.base import (
    JSON,
    MAX_CHUNKS,
    Chunk,
    ChunkOutcome,
    Job,
    JobContext,
    ParamError,
    check_keys,
    int_param,
    str_param,
)
from batchapp.jobs.sales_csv import MAX_LINE_BYTES, RAW_KEEP, HeaderError, RowParser, read_header
from batchapp.storage.engines import placeholder
from batchapp.storage.tables import sales, sales_rejects
from batchapp.validate import shown

SCAN_BLOCK = 1 << 20
HOLDER_BATCH = 2_000
# A prepared row's columns, then the job id appended at commit (one tuple built per row).
_PREPARED_SALES_COLUMNS = (*(c.name for c in sales.columns if c.name != "job_id"), "job_id")


class FileChanged(RuntimeError):
    """The file is not the one the job was planned on."""


def resolve_data_path(data_dir: Path, name: str) -> Path:
    """``name`` as a real file inside ``data_dir``; anything that leads outside is refused."""
    if "\0" in name:
        raise ParamError("import_csv: path contains a NUL byte")
    root = data_dir.resolve()
    candidate = Path(name) if os.path.isabs(name) else root / name
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise ParamError(
            f"import_csv: file not found: {shown(name)} "
            f"(paths are relative to BATCHAPP_DATA_DIR {root})"
        ) from None
    except (OSError, RuntimeError) as exc:
        raise ParamError(f"import_csv: cannot resolve {shown(name)}: {exc}") from None
    if not real.is_relative_to(root):
        raise ParamError(
            f"import_csv: {shown(name)} is outside BATCHAPP_DATA_DIR ({root}); "
            "only files inside it can be imported"
        )
    if not real.is_file():
        raise ParamError(f"import_csv: {shown(name)} is not a regular file")
    return real


@dataclass(frozen=True)
class Prepared:
    rows: list[tuple[Any, ...]]
    """The sales columns, each row ending with its line number."""
    rejects: list[tuple[int, str, str]]
    """(line, reason, the line's start)"""


@dataclass
class Repeats:
    """What a chunk found out about order ids that occur on more than one line of the file."""

    rejects: list[tuple[int, str, str, int]]
    """(line, reason, the row, the id's first line), for the rejects table"""
    own: int = 0
    """this chunk's lines rejected as repeats of an earlier line"""
    taken_over: int = 0
    """other chunks' lines, imported before, now rejected as repeats of this chunk's line"""


class ImportCsv(Job):
    name = "import_csv"
    summary = "load a sales CSV into the sales table; bad rows go to sales_rejects"
    params_help = "path=FILE (relative to BATCHAPP_DATA_DIR), chunk_rows=INT (default 20000)"

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, JSON]:
        check_keys(self.name, raw, {"path", "chunk_rows"})
        root = ctx.settings.data_dir.resolve()
        path = resolve_data_path(root, str_param(self.name, raw, "path"))
        chunk_rows = int_param(
            self.name, raw, "chunk_rows", default=20_000, minimum=1, maximum=1_000_000
        )
        try:
            stat = path.stat()
            with path.open("rb") as file:
                header = file.readline(MAX_LINE_BYTES + 1)
        except OSError as exc:
            raise ParamError(f"import_csv: cannot read {path.name}: {exc.strerror}") from None
        if not header:
            raise ParamError(f"import_csv: {path.name} is empty (expected a header line)")
        if len(header) > MAX_LINE_BYTES:
            raise ParamError(
                f"import_csv: {path.name}: the header line is longer than {MAX_LINE_BYTES:,} bytes"
            )
        try:
            columns = read_header(header)
        except HeaderError as exc:
            raise ParamError(f"import_csv: {path.name}: {exc}") from None
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
        chunk_rows: int = params["chunk_rows"]
        specs = []
        with path.open("rb") as file:
            offset = len(file.readline(MAX_LINE_BYTES + 1))
            if offset > MAX_LINE_BYTES:
                raise ParamError("import_csv: the header line is too long")
            start, first_line, lines = offset, 2, 0
            tail_open = False
            while block := file.read(SCAN_BLOCK):
                position = 0
                while True:
                    newline = block.find(b"\n", position)
                    if newline < 0:
                        tail_open = position < len(block)
                        break
                    lines += 1
                    position = newline + 1
                    if lines == chunk_rows:
                        end = offset + position
                        specs.append({"offset": start, "line": first_line, "lines": lines})
                        start, first_line, lines = end, first_line + lines, 0
                offset += len(block)
                if len(specs) > MAX_CHUNKS:
                    raise ParamError(
                        f"import_csv: more than {MAX_CHUNKS:,} chunks of {chunk_rows:,} rows; "
                        "use a larger chunk_rows"
                    )
            if tail_open:
                lines += 1  # a last line without a newline is still a row
            if lines:
                specs.append({"offset": start, "line": first_line, "lines": lines})
        return iter(specs)

    def prepare(self, params: dict[str, JSON], spec: dict[str, JSON], ctx: JobContext) -> Prepared:
        path = self._open_checked(params, ctx)
        sqlite = ctx.engine.dialect.name == "sqlite"
        parse = RowParser(
            columns=tuple(params["columns"]),
            tz=ctx.tz,
            # SQLite stores times as text in SQLAlchemy's format; other drivers take objects.
            to_db_time=_sqlite_datetime if sqlite else _same,
            to_db_date=date.isoformat if sqlite else _same,
        )
        rows: list[tuple[Any, ...]] = []
        rejects: list[tuple[int, str, str]] = []
        with path.open("rb") as file:
            file.seek(spec["offset"])
            for number, raw in _lines(file, spec["line"], spec["lines"]):
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
                    rejects.append((number, parsed, _storable(text[:RAW_KEEP])))
                else:
                    rows.append((*parsed, number))
        return Prepared(rows=rows, rejects=rejects)

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        prepared: Prepared = chunk.prepared
        job_id = chunk.job_id
        new = 0
        repeats = Repeats(rejects=[])
        if prepared.rows:
            rows = [(*row, job_id) for row in prepared.rows]
            insert = _insert_sql(connection, sales, "order_id", _PREPARED_SALES_COLUMNS)
            result = connection.exec_driver_sql(insert, rows)
            new = max(result.rowcount, 0)
            if new < len(rows):  # some ids were there already: from this file, or from before
                repeats = _settle_repeats(connection, job_id, prepared.rows)
        rejects: list[tuple[Any, ...]] = [(job_id, *r, None) for r in prepared.rejects]
        rejects += [(job_id, *reject) for reject in repeats.rejects]
        if rejects:
            connection.exec_driver_sql(_insert_sql(connection, sales_rejects, None), rejects)
        imported = len(prepared.rows) - repeats.own - repeats.taken_over
        rejected = len(prepared.rejects) + repeats.own + repeats.taken_over
        return ChunkOutcome(
            items_done=imported,
            items_failed=rejected,
            output={"imported": imported, "rejected": rejected, "new": new},
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
            path = resolve_data_path(ctx.settings.data_dir, params["path"])
        except ParamError as exc:
            raise FileChanged(str(exc)) from None
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (params["size"], params["mtime_ns"]):
            raise FileChanged(
                f"import_csv: {params['path']} changed since the job was submitted "
                f"(size {params['size']:,} -> {stat.st_size:,} bytes); submit it again"
            )
        return path


def _lines(file: BinaryIO, first: int, count: int) -> Iterator[tuple[int, bytes | str]]:
    """(line number, bytes) for ``count`` lines; an over-long line comes as its reject reason."""
    for number in range(first, first + count):
        raw = file.readline(MAX_LINE_BYTES + 1)
        if len(raw) > MAX_LINE_BYTES:
            skipped = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = file.readline(SCAN_BLOCK)
                skipped += len(raw)
            yield number, f"line longer than {MAX_LINE_BYTES:,} bytes ({skipped:,} bytes)"
        else:
            yield number, raw


def _settle_repeats(
    connection: Connection, job_id: str, rows: Sequence[tuple[Any, ...]]
) -> Repeats:
    """Reject this chunk's lines whose id an earlier line of the file holds; take over the ids
    that a later line holds (rejecting that line instead). Runs only when an insert conflicted."""
    holders = _holders(connection, job_id, [row[0] for row in rows])
    repeats = Repeats(rejects=[])
    for row in rows:  # in line order, so an id repeated within the chunk keeps its first line
        order_id, line = row[0], row[-1]
        holder = holders.get(order_id)
        if holder is None or holder.line == line:
            continue  # an earlier import's row (a duplicate), or this very row
        if holder.line < line:
            repeats.rejects.append(
                (line, _repeat_reason(order_id, holder.line), _row_text(row), holder.line)
            )
            repeats.own += 1
            continue
        _take_over(connection, job_id, row, holder.line)
        repeats.rejects.append(
            (holder.line, _repeat_reason(order_id, line), _row_text(holder), line)
        )
        repeats.taken_over += 1
        holders[order_id] = _Holder((*row[:-1], job_id, line))
    return repeats


class _Holder(tuple[Any, ...]):
    """A sales row as selected: the columns in table order."""

    @property
    def line(self) -> int:
        return int(self[-1])


def _holders(connection: Connection, job_id: str, order_ids: list[str]) -> dict[str, _Holder]:
    """This job's sales rows holding these ids, locked on PostgreSQL until the chunk commits
    (rows of earlier imports only make duplicates, so they are not read: a re-import stays fast)."""
    marker = placeholder(connection)
    columns = ", ".join(column.name for column in sales.columns)
    lock = " FOR UPDATE" if connection.dialect.name == "postgresql" else ""
    found: dict[str, _Holder] = {}
    for start in range(0, len(order_ids), HOLDER_BATCH):
        batch = sorted(set(order_ids[start : start + HOLDER_BATCH]))
        markers = ", ".join(marker for _ in batch)
        # Sorted ids, so two chunks lock shared rows in the same order.
        sql = (
            f"SELECT {columns} FROM {sales.name} "
            f"WHERE job_id = {marker} AND order_id IN ({markers}) ORDER BY order_id{lock}"
        )
        for selected in connection.exec_driver_sql(sql, (job_id, *batch)):
            found[selected[0]] = _Holder(selected)
    return found


def _take_over(connection: Connection, job_id: str, row: tuple[Any, ...], line: int) -> None:
    """Put ``row`` (an earlier line) in place of the id's row from ``line``, and re-point the
    rejects that named ``line`` as the id's first occurrence."""
    marker = placeholder(connection)
    content = [column.name for column in sales.columns][1:]
    assignments = ", ".join(f"{name} = {marker}" for name in content)
    connection.exec_driver_sql(
        f"UPDATE {sales.name} SET {assignments} WHERE order_id = {marker}",
        (*row[1:-1], job_id, row[-1], row[0]),
    )
    connection.exec_driver_sql(
        f"UPDATE {sales_rejects.name} SET reason = {marker}, first_line = {marker} "
        f"WHERE job_id = {marker} AND first_line = {marker}",
        (_repeat_reason(row[0], row[-1]), row[-1], job_id, line),
    )


def _repeat_reason(order_id: str, first_line: int) -> str:
    return f"order_id {order_id!r} repeats line {first_line} (a file may hold an order_id once)"


def _row_text(row: Sequence[Any]) -> str:
    """A sales row as CSV (the columns as stored, sold_at in UTC), for a repeat's reject."""
    order_id, sold_at, _sold_on, store, sku, quantity, unit_cents = row[:7]
    price = f"{unit_cents // 100}.{unit_cents % 100:02d}"
    return _storable(f"{order_id},{sold_at},{store},{sku},{quantity},{price}"[:RAW_KEEP])


def _storable(text: str) -> str:
    """Text PostgreSQL can store: NUL becomes U+FFFD, as undecodable bytes do."""
    return text.replace("\0", "\ufffd")


def _keep(raw: bytes) -> str:
    return _storable(raw[:RAW_KEEP].decode("utf-8", errors="replace").rstrip("\r\n"))


def _sqlite_datetime(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")


def _same(value: Any) -> Any:
    return value


def _insert_sql(
    connection: Connection, table: Any, key: str | None, names: Sequence[str] | None = None
) -> str:
    """A plain positional INSERT for DB-API executemany: no per-row SQLAlchemy work."""
    marker = placeholder(connection)
    names = names or [column.name for column in table.columns]
    values = ", ".join(marker for _ in names)
    target = f"({key})" if key else ""
    return (
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({values}) "
        f"ON CONFLICT {target} DO NOTHING"
    )
