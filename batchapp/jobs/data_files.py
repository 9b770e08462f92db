"""The file a CSV import reads: confined to ``BATCHAPP_DATA_DIR``, planned by byte offset.

Planning counts newlines in blocks (constant memory) and cuts the file into chunks of a number
of lines after the header, each an offset, a first line number and a line count, so a worker
seeks to its own slice and reads only that.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from batchapp.jobs.base import JSON, MAX_CHUNKS, ParamError
from batchapp.jobs.csv_rows import MAX_LINE_BYTES
from batchapp.validate import shown

SCAN_BLOCK = 1 << 20


class FileChanged(RuntimeError):
    """The file is not the one the job was planned on."""


def data_path(data_dir: Path, name: str, job: str, what: str = "path") -> Path:
    """``name`` (relative to ``data_dir``, or absolute) as the real path of something that
    exists inside ``data_dir``; anything leading out of it (``..``, an absolute path elsewhere,
    a symlink) is refused with a :class:`ParamError` naming ``job`` and ``what`` was sought."""
    if "\0" in name:
        raise ParamError(f"{job}: path contains a NUL byte")
    root = data_dir.resolve()
    candidate = Path(name) if os.path.isabs(name) else root / name
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise ParamError(
            f"{job}: {what} not found: {shown(name)} "
            f"(paths are relative to BATCHAPP_DATA_DIR {root})"
        ) from None
    except (OSError, RuntimeError) as exc:
        raise ParamError(f"{job}: cannot resolve {shown(name)}: {exc}") from None
    if not real.is_relative_to(root):
        raise ParamError(
            f"{job}: {shown(name)} is outside BATCHAPP_DATA_DIR ({root}); "
            "only what is inside it can be read"
        )
    return real


def resolve_data_path(data_dir: Path, name: str, job: str = "import_csv") -> Path:
    """``name`` as a real regular file inside ``data_dir`` (see :func:`data_path`)."""
    real = data_path(data_dir, name, job, "file")
    if not real.is_file():
        raise ParamError(f"{job}: {shown(name)} is not a regular file")
    return real


def plan_line_chunks(path: Path, chunk_rows: int, job: str) -> list[dict[str, JSON]]:
    """``{"offset", "line", "lines"}`` per chunk of ``chunk_rows`` lines after the header."""
    specs: list[dict[str, Any]] = []
    with path.open("rb") as file:
        offset = len(file.readline(MAX_LINE_BYTES + 1))
        if offset > MAX_LINE_BYTES:
            raise ParamError(f"{job}: the header line is too long")
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
                    f"{job}: more than {MAX_CHUNKS:,} chunks of {chunk_rows:,} rows; "
                    "use a larger chunk_rows"
                )
        if tail_open:
            lines += 1  # a last line without a newline is still a row
        if lines:
            specs.append({"offset": start, "line": first_line, "lines": lines})
    return specs


def read_lines(file: BinaryIO, first: int, count: int) -> Iterator[tuple[int, bytes | str]]:
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
