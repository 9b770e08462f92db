"""import_csv: the sales CSV (:mod:`batchapp.jobs.sales_csv`) into the ``sales`` table.

One declared import among any others (:mod:`batchapp.jobs.table_import`), built in: bad rows
go to ``sales_rejects``, and its rows keep their job and line in ``job_id`` and ``line``.
"""

from __future__ import annotations

from batchapp.jobs.sales_csv import SALES
from batchapp.jobs.table_import import FileChanged, TableImport, resolve_data_path

__all__ = ["FileChanged", "ImportCsv", "resolve_data_path"]


class ImportCsv(TableImport):
    def __init__(self) -> None:
        super().__init__(
            SALES, summary="load a sales CSV into the sales table; bad rows go to sales_rejects"
        )
