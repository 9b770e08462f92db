"""``batchapp demo``: the whole service on one machine with no servers.

Worker and beat run on kombu's ``filesystem://`` transport in a fresh data folder, with the
SQLite results; the demo calls ``calculate_sum(100)``, shows the beat schedule, runs a
``parallel_sum`` and an ``import_csv`` job with progress, and stops every process it started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import click

SAMPLE_ROWS = 20_000
SAMPLE_BAD = 0.02
WAIT_S = 120.0


def run_demo(*, keep: bool = False) -> int:
    """Run the demo; returns the exit status."""
    data_dir = Path(tempfile.mkdtemp(prefix="batchapp-demo-"))
    # Before batchapp.celery is imported: this process and its children use the folder broker.
    os.environ.update(BATCHAPP_DATA_DIR=str(data_dir), BATCHAPP_BROKER_URL="filesystem://")
    os.environ.pop("BATCHAPP_RESULT_BACKEND", None)
    os.environ.pop("BATCHAPP_DATABASE_URL", None)

    from batchapp import service
    from batchapp.cli import display, processes

    def wait(view: service.JobView) -> Callable[..., service.JobView]:
        return partial(service.wait_for_job, view, WAIT_S)

    click.echo(f"batchapp demo: embedded broker and SQLite results in {data_dir}")
    worker = processes.worker(os.environ, data_dir / "worker.log")
    beat = processes.beat(os.environ, data_dir / "beat.log")
    try:
        worker.wait_ready()
        beat.wait_ready()
        click.echo(f"worker (pid {worker.pid}) and beat (pid {beat.pid}) are up\n")

        click.echo(f"calculate_sum(100) = {service.call_calculate_sum(100, timeout=60)}\n")

        click.echo("beat schedule:")
        tz = service.timezone()
        display.print_schedule(service.schedule()[0], tz)
        click.echo()

        view = service.submit_job("parallel_sum", {"n": 1_000_000, "chunk_size": 10_000})
        view = display.wait_with_progress(view, wait(view), show=True, lines=True)
        display.print_job(view, tz)
        click.echo()

        _, stats = service.write_sample_csv(Path("sales.csv"), SAMPLE_ROWS, SAMPLE_BAD, seed=1)
        click.echo(f"sample CSV: {stats.rows:,} rows, {stats.bad:,} of them bad")
        view = service.submit_job("import_csv", {"path": "sales.csv", "chunk_rows": 2_000})
        view = display.wait_with_progress(view, wait(view), show=True, lines=True)
        display.print_job(view, tz)
        ok = view.status == service.SUCCEEDED
    finally:
        beat.stop()
        worker.stop()
        click.echo("\nstopped worker and beat")
        if keep:
            click.echo(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if ok else 1
