"""Jobs for tests only, registered in ``jobs.JOBS`` on import.

A worker loads them with ``celery -A batchapp worker -I tests.ledger_jobs``; a test imports
this module to submit them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from batchapp.jobs import JOBS, ChunkOutcome, Job, JobContext
from batchapp.jobs.base import JSON, Chunk, check_keys, int_param


class SlowSum(Job):
    """1 + ... + n in chunks of one number each, every chunk taking ``ms`` milliseconds."""

    name = "slow_sum"
    summary = "a sum whose chunks take a while (tests)"
    params_help = "n=INT ms=INT"

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, JSON]:
        check_keys(self.name, raw, {"n", "ms"})
        return {
            "n": int_param(self.name, raw, "n", minimum=0, maximum=10_000),
            "ms": int_param(self.name, raw, "ms", default=0, minimum=0, maximum=60_000),
        }

    def plan(self, params: dict[str, JSON], ctx: JobContext) -> Iterator[dict[str, JSON]]:
        for number in range(1, params["n"] + 1):
            yield {"number": number}

    def prepare(self, params: dict[str, JSON], spec: dict[str, JSON], ctx: JobContext) -> Any:
        time.sleep(params["ms"] / 1000)

    def commit(self, connection: Connection, chunk: Chunk, ctx: JobContext) -> ChunkOutcome:
        return ChunkOutcome(items_done=1, output=chunk.spec["number"])

    def reduce(self, params: dict[str, JSON], outputs: list[JSON]) -> JSON:
        return sum(outputs)


class KillsItsProcess(SlowSum):
    """Like slow_sum, but the chunk of number 1 kills its own process every time it runs."""

    name = "kills_its_process"

    def prepare(self, params: dict[str, JSON], spec: dict[str, JSON], ctx: JobContext) -> Any:
        if spec["number"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)


class IgnoresSoftLimit(SlowSum):
    """Like slow_sum, but the chunk of number 1 ignores its soft time limit, so the hard one
    kills its process."""

    name = "ignores_soft_limit"

    def prepare(self, params: dict[str, JSON], spec: dict[str, JSON], ctx: JobContext) -> Any:
        if spec["number"] == 1:
            # The soft time limit arrives as SIGUSR1 in a prefork pool process.
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            time.sleep(3600)


class PausesOnce(SlowSum):
    """Like slow_sum, but the chunk of number 1 writes its process id to
    :func:`pid_file` and sleeps ``hold_ms`` in ``prepare``, outside any transaction, so a test
    can stop that process there."""

    name = "pauses_once"
    params_help = "n=INT ms=INT hold_ms=INT"

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, JSON]:
        check_keys(self.name, raw, {"n", "ms", "hold_ms"})
        return {
            "n": int_param(self.name, raw, "n", minimum=0, maximum=10_000),
            "ms": int_param(self.name, raw, "ms", default=0, minimum=0, maximum=60_000),
            "hold_ms": int_param(self.name, raw, "hold_ms", default=0, minimum=0, maximum=60_000),
        }

    def prepare(self, params: dict[str, JSON], spec: dict[str, JSON], ctx: JobContext) -> Any:
        if spec["number"] == 1:
            pid_file(ctx).write_text(str(os.getpid()))
            time.sleep(params["hold_ms"] / 1000)
        return super().prepare(params, spec, ctx)


def pid_file(ctx: JobContext) -> Path:
    """Where the chunk of number 1 of ``pauses_once`` writes its process id."""
    return ctx.settings.data_dir / "pauses_once.pid"


for _job in (SlowSum(), KillsItsProcess(), IgnoresSoftLimit(), PausesOnce()):
    JOBS[_job.name] = _job
