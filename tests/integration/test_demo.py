"""README command 1: ``batchapp demo`` needs no server and stops what it starts."""

from __future__ import annotations

import os

from tests.support import run_cli


def test_demo_prints_5050_the_schedule_and_the_jobs_with_no_broker() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHAPP_")}
    # A broker URL that would fail: the demo must not touch it.
    env["BATCHAPP_BROKER_URL"] = "amqp://guest:guest@127.0.0.1:1//"
    done = run_cli("demo", env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "calculate_sum(100) = 5050" in done.stdout
    assert "NEXT RUN (Asia/Seoul)" in done.stdout
    assert "result   500000500000" in done.stdout
    assert '"rows": 20000' in done.stdout
    assert "stopped worker and beat" in done.stdout
