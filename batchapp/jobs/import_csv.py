"""import_csv: stream a sales CSV of any size into the ``sales`` table, chunk by chunk.

Submitting scans the file once for line boundaries (constant memory) and plans chunks of
``chunk_rows`` lines by byte offset, so a worker reads only its own slice. Good rows land in
``sales`` (a repeated ``order_id`` is skipped, so re-importing adds nothing); bad rows land in
``sales_rejects`` with their line number and reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Connection

from batchapp.db import placeholder
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
from batchapp.sales_csv import MAX_LINE_BYTES, RAW_KEEP, HeaderError, RowParser, read_header
from batchapp.tables import sales, sales_rejects

SCAN_BLOCK = 1 << 20


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
            f"import_csv: file not found: {name!r} (paths are relative to BATCHAPP_DATA_DIR {root})"
        ) from None
    except (OSError, RuntimeError) as exc:
        raise ParamError(f"import_csv: cannot resolve {name!r}: {exc}") from None
    if not real.is_relative_to(root):
        raise ParamError(
            f"import_csv: {name!r} is outside BATCHAPP_DATA_DIR ({root}); "
            "only files inside it can be imported"
        )
    if not real.is_file():
        raise ParamError(f"import_csv: {name!r} is not a regular file")
    return real


@dataclass(frozen=True)
class Prepared:
    rows: list[tuple[Any, ...]]
    rejects: list[tuple[int, str, str]]
    """(line, reason, the line's start)"""


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
        stat = path.stat()
        with path.open("rb") as file:
            header = file.readline(MAX_LINE_BYTES + 1)
        if not header:
            raise ParamError(f"import_csv: {path.name} is empty (expected a header line)")
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
                    rejects.append((number, parsed, text[:RAW_KEEP]))
                else:
                    rows.append(parsed)
        return Prepared(rows=rows, rejects=rejects)

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        prepared: Prepared = chunk.prepared
        new = 0
        if prepared.rows:
            rows = [(*row, chunk.job_id) for row in prepared.rows]
            result = connection.exec_driver_sql(_insert_sql(connection, sales, "order_id"), rows)
            new = max(result.rowcount, 0)
        if prepared.rejects:
            rejects = [(chunk.job_id, *reject) for reject in prepared.rejects]
            connection.exec_driver_sql(_insert_sql(connection, sales_rejects, None), rejects)
        valid = len(prepared.rows)
        return ChunkOutcome(
            items_done=valid,
            items_failed=len(prepared.rejects),
            output={"imported": valid, "rejected": len(prepared.rejects), "new": new},
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


def _keep(raw: bytes) -> str:
    return raw[:RAW_KEEP].decode("utf-8", errors="replace").rstrip("\r\n")


def _sqlite_datetime(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")


def _same(value: Any) -> Any:
    return value


def _insert_sql(connection: Connection, table: Any, key: str | None) -> str:
    """A plain positional INSERT for DB-API executemany: no per-row SQLAlchemy work."""
    marker = placeholder(connection)
    columns = ", ".join(column.name for column in table.columns)
    values = ", ".join(marker for _ in table.columns)
    target = f"({key})" if key else ""
    return f"INSERT INTO {table.name} ({columns}) VALUES ({values}) ON CONFLICT {target} DO NOTHING"
