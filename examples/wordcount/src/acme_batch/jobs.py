"""acme.wordcount: the words of the text files in a folder, counted as a map-reduce.

Registered through this package's ``batchapp.jobs`` entry point (``pyproject.toml``); after
``pip install -e examples/wordcount`` a worker knows it with no ``BATCHAPP_JOBS``::

    batchapp submit acme.wordcount folder=texts top=5 --wait

Each chunk is a byte range of one file (a whole file when it is smaller than ``chunk_bytes``);
its output is ``{word: count}``; the reduce adds them up and ranks the words.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from batchapp import (
    Chunk,
    ChunkOutcome,
    Float,
    Int,
    Job,
    JobContext,
    ParamError,
    Str,
    data_path,
)

from acme_batch.words import byte_ranges, count_range, merge, top_words

if TYPE_CHECKING:
    from sqlalchemy import Connection  # the ledger's transaction, which commit() is given

NAME = "acme.wordcount"
# batchapp's limit on the chunks of one job.
MAX_CHUNKS = 10_000
PARAMS = {
    "folder": Str(),
    "pattern": Str(default="*.txt"),
    "top": Int(min=1, max=1000, default=10),
    "chunk_bytes": Int(min=64, max=64 * 1024 * 1024, default=1024 * 1024),
    # Seconds each chunk waits before counting: lets you watch a job move (and kill a worker).
    "pause": Float(min=0, max=10, default=0.0),
}


class FileChanged(RuntimeError):
    """A file is not the one the job was planned on."""


class WordCount(Job):
    # The full-control form, because the job needs ctx.settings.data_dir at submit (to confine
    # the folder) and in every chunk (to find its file); the short form's functions get no ctx.
    name = NAME
    summary = "count the words of the text files in a folder; the total and the top words"
    params_help = ", ".join(param.help(key) for key, param in PARAMS.items())

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        unknown = sorted(set(raw) - set(PARAMS))
        if unknown:
            raise ParamError(
                f"{NAME}: unknown parameter {unknown[0]!r} (known: {', '.join(sorted(PARAMS))})"
            )
        params = {key: param.parse(NAME, raw, key) for key, param in PARAMS.items()}
        root = ctx.settings.data_dir.resolve()
        folder = data_path(root, params["folder"], NAME, "folder")
        if not folder.is_dir():
            raise ParamError(f"{NAME}: {params['folder']} is not a folder")
        params["folder"] = str(folder.relative_to(root))
        return params

    def plan(self, params: dict[str, Any], ctx: JobContext) -> Iterator[dict[str, Any]]:
        root = ctx.settings.data_dir.resolve()
        files = sorted(
            path for path in (root / params["folder"]).glob(params["pattern"]) if path.is_file()
        )
        if not files:
            raise ParamError(f"{NAME}: no file matches {params['pattern']} in {params['folder']}")
        count = 0
        for found in files:
            path = data_path(root, str(found.relative_to(root)), NAME, "file")
            size = path.stat().st_size
            with path.open("rb") as file:
                for start, end in byte_ranges(file, size, params["chunk_bytes"]):
                    count += 1
                    if count > MAX_CHUNKS:
                        raise ParamError(
                            f"{NAME}: more than {MAX_CHUNKS:,} chunks; use a larger chunk_bytes"
                        )
                    relative = str(path.relative_to(root))
                    yield {"path": relative, "start": start, "end": end, "size": size}

    def prepare(self, params: dict[str, Any], spec: dict[str, Any], ctx: JobContext) -> Any:
        time.sleep(params["pause"])
        path = data_path(ctx.settings.data_dir, spec["path"], NAME, "file")
        size = path.stat().st_size
        if size != spec["size"]:
            raise FileChanged(
                f"{NAME}: {spec['path']} changed since the job was submitted "
                f"({spec['size']:,} -> {size:,} bytes); submit it again"
            )
        return count_range(path, spec["start"], spec["end"])

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        counts = chunk.prepared
        return ChunkOutcome(items_done=sum(counts.values()), output=dict(counts))

    def reduce(self, params: dict[str, Any], outputs: list[Any]) -> Any:
        total = merge(outputs)
        return {
            "words": sum(total.values()),
            "distinct": len(total),
            "top": top_words(total, params["top"]),
        }
