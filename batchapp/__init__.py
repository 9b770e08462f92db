"""batchapp: batch processing on Celery.

The public job API is imported from here::

    from batchapp import Int, job, ranges

    @job("acme.squares", params={"n": Int(min=0, max=10**9)},
         chunks=lambda p: ranges(1, p["n"], 1000), reduce=sum)
    def squares(spec, params):
        return sum(i * i for i in range(spec["first"], spec["last"] + 1))

A CSV into a table of your own is declared with ``csv_import`` and the ``Csv...`` column
types (``CsvColumn``, ``CsvInt``, ``CsvDecimal``, ``CsvText``, ``CsvDate``, ``CsvTimestamp``,
``CsvBool``, ``Derived``); see docs/jobs.md. ``data_path`` confines a path a job is given
to ``BATCHAPP_DATA_DIR``.

Its names are loaded on first use, so ``import batchapp`` stays light: it neither loads the
settings nor makes the Celery app, which lives in :mod:`batchapp.celery` (``celery -A
batchapp`` finds it there); tasks live in :mod:`batchapp.tasks`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchapp.beat.timing import cron, every
    from batchapp.jobs.base import Chunk, ChunkOutcome, Job, JobContext, ParamError
    from batchapp.jobs.columns import (
        CsvBool,
        CsvDate,
        CsvDecimal,
        CsvInt,
        CsvText,
        CsvTimestamp,
        CsvType,
        DeclarationError,
    )
    from batchapp.jobs.data_files import data_path
    from batchapp.jobs.decorator import FunctionJob, job, ranges
    from batchapp.jobs.import_spec import CsvColumn, Derived
    from batchapp.jobs.params import Bool, Choice, Float, Int, Param, Str
    from batchapp.jobs.registry import JOBS, JobRegistryError
    from batchapp.jobs.table_import import TableImport, csv_import

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "Job": "batchapp.jobs.base",
    "JobContext": "batchapp.jobs.base",
    "Chunk": "batchapp.jobs.base",
    "ChunkOutcome": "batchapp.jobs.base",
    "ParamError": "batchapp.jobs.base",
    "job": "batchapp.jobs.decorator",
    "ranges": "batchapp.jobs.decorator",
    "FunctionJob": "batchapp.jobs.decorator",
    "Param": "batchapp.jobs.params",
    "Int": "batchapp.jobs.params",
    "Float": "batchapp.jobs.params",
    "Str": "batchapp.jobs.params",
    "Bool": "batchapp.jobs.params",
    "Choice": "batchapp.jobs.params",
    "JOBS": "batchapp.jobs.registry",
    "every": "batchapp.beat.timing",
    "cron": "batchapp.beat.timing",
    "JobRegistryError": "batchapp.jobs.registry",
    "csv_import": "batchapp.jobs.table_import",
    "TableImport": "batchapp.jobs.table_import",
    "CsvColumn": "batchapp.jobs.import_spec",
    "Derived": "batchapp.jobs.import_spec",
    "CsvType": "batchapp.jobs.columns",
    "CsvInt": "batchapp.jobs.columns",
    "CsvDecimal": "batchapp.jobs.columns",
    "CsvText": "batchapp.jobs.columns",
    "CsvDate": "batchapp.jobs.columns",
    "CsvTimestamp": "batchapp.jobs.columns",
    "CsvBool": "batchapp.jobs.columns",
    "DeclarationError": "batchapp.jobs.columns",
    "data_path": "batchapp.jobs.data_files",
}

__all__ = [
    "JOBS",
    "Bool",
    "Choice",
    "Chunk",
    "ChunkOutcome",
    "CsvBool",
    "CsvColumn",
    "CsvDate",
    "CsvDecimal",
    "CsvInt",
    "CsvText",
    "CsvTimestamp",
    "CsvType",
    "DeclarationError",
    "Derived",
    "Float",
    "FunctionJob",
    "Int",
    "Job",
    "JobContext",
    "JobRegistryError",
    "Param",
    "ParamError",
    "Str",
    "TableImport",
    "cron",
    "csv_import",
    "data_path",
    "every",
    "job",
    "ranges",
]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'batchapp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
