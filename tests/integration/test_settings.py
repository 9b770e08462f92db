"""Settings as worker and beat processes meet them: bad values stop them in one line, and a
broker drop lets running chunks finish."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from batchapp import ledger
from batchapp.celery import app
from batchapp.jobs.sales_csv import write_sample
from batchapp.storage.tables import sales
from batchapp.tasks import calculate_sum, publish_chunks
from tests.integration.conftest import RESULT_TIMEOUT, RUN_DATA_DIR, Stack


def run_celery(command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``celery -A batchapp COMMAND`` as a user starts it (it should exit at once here)."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "batchapp", command, "-l", "INFO"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_bad_settings_stop_worker_and_beat_with_one_line_naming_the_variable(
    tmp_path: Path,
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    data_dir = str(tmp_path)
    cases = [
        (
            "worker",
            {"BATCHAPP_DATA_DIR": str(a_file / "data")},
            f"BATCHAPP_DATA_DIR: cannot create '{a_file / 'data'}': Not a directory",
        ),
        (
            "beat",
            {"BATCHAPP_DATA_DIR": data_dir, "BATCHAPP_BEAT_INTERVAL": "1e-9"},
            "BATCHAPP_BEAT_INTERVAL: '1e-9' is too small (at least 0.5 seconds)",
        ),
        (
            "worker",
            {"BATCHAPP_DATA_DIR": data_dir, "BATCHAPP_TASK_SOFT_TIME_LIMIT": "inf"},
            "BATCHAPP_TASK_SOFT_TIME_LIMIT: 'inf' is too large (at most 315359940)",
        ),
        (
            "worker",
            {"BATCHAPP_DATA_DIR": data_dir, "BATCHAPP_RESULT_EXPIRES": "nan"},
            "BATCHAPP_RESULT_EXPIRES: expected a positive int, got 'nan'",
        ),
    ]
    # Started together: each is a whole interpreter start-up, and they are independent.
    started = [(run_celery(command, env), expected) for command, env, expected in cases]
    for process, expected in started:
        try:
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode != 0, expected
        assert stderr.strip().splitlines() == [f"batchapp: {expected}"]


@pytest.mark.slow
def test_a_broker_drop_lets_running_chunks_finish_without_celerys_warning(stack: Stack) -> None:
    ctx = stack.ctx
    rows, seed = 200_000, 77
    bad = write_sample(RUN_DATA_DIR / "drop.csv", rows, bad_fraction=0.01, seed=seed).bad
    worker = stack.worker("dropped")
    view = ledger.submit(
        ctx, "import_csv", {"path": "drop.csv", "chunk_rows": 100_000}, publish_chunks
    )
    worker.wait_for_log("batchapp.tasks.run_chunk[")
    vhost = app.conf.broker_url.rsplit("/", 1)[1]
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "batchapp drop test"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    done = ledger.wait(ctx, view.id, timeout=120)
    worker.wait_for_log("Connected to amqp://", count=2)
    # The worker serves on (and this caller's own dropped connection is revived by a publish).
    assert calculate_sum.delay(20).get(timeout=RESULT_TIMEOUT) == 210

    with ctx.engine.connect() as connection:
        stored, distinct = connection.execute(
            select(func.count(), func.count(func.distinct(sales.c.order_id))).where(
                sales.c.order_id.like(f"S{seed}-%")
            )
        ).one()
    assert done.status == "succeeded"
    assert stored == distinct == rows - bad
    assert "worker_cancel_long_running_tasks_on_connection_loss" not in worker.log()
    assert "Terminating it instead" not in worker.log()
