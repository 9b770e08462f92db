"""How long one job's row is locked per chunk commit on PostgreSQL, and the chunk commits a
second that one job then reaches, with 2 processes committing its chunks side by side.

Two variants on one fresh PostgreSQL database, ledger only (no broker: the measure is the
ledger's), each a ``parallel_sum`` of one item per chunk:

- ``job_row_per_commit``: a chunk's commit as batchapp made it before, kept here as the
  reference: the chunk read in a transaction of its own, then one transaction that takes the
  job row (``SELECT ... FOR UPDATE``), marks the chunk done and touches the job; two pooled
  checkouts with a ping each.
- ``chunk_row_guard``: :func:`batchapp.ledger.run_chunk` as it is: the chunk's own row is the
  guard, and the job row is locked only by the chunk that finds none left to run.

The lock is timed in the processes that take it, from the start of the ``FOR UPDATE``
statement (its wait included) to the end of the ``COMMIT`` that releases it.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from harness import Bench, JSONDict, Target, progress, ratio, timing

from tests.support import postgres_database

NAME = "chunk_lock"
FULL = {"chunks": 10_000, "processes": 2}
QUICK = {"chunks": 500, "processes": 2}
VARIANTS = ("job_row_per_commit", "chunk_row_guard")
# At most this long per chunk commit, or the job row not taken per chunk at all.
LOCK_MS_TARGET = 1.0


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    progress(f"chunk_lock: {size['chunks']:,} chunks x {len(VARIANTS)} variants on PostgreSQL")
    with postgres_database("batchapp_bench") as url:
        variant = bench.variant("chunk-lock", BATCHAPP_DATABASE_URL=url)
        out = variant.client(__name__, **size)
    before, after = out["job_row_per_commit"], out["chunk_row_guard"]
    return {
        "chunk_lock": {name: out[name] for name in VARIANTS},
        "chunk_lock_ms": after["lock_ms_per_commit"],
        "ratios": {
            "chunk_lock_after_over_before": ratio(
                after["lock_ms_per_commit"] or None, before["lock_ms_per_commit"]
            ),
            "chunks_per_s_after_over_before": ratio(after["chunks_per_s"], before["chunks_per_s"]),
        },
    }


def client(params: JSONDict) -> JSONDict:
    """Each variant: one job of ``chunks`` chunks, committed by ``processes`` processes."""
    return {name: run_variant(name, params["chunks"], params["processes"]) for name in VARIANTS}


def run_variant(name: str, chunks: int, processes: int) -> JSONDict:
    from batchapp import ledger

    ctx = context(name)
    view = ledger.submit(ctx, "parallel_sum", {"n": chunks, "chunk_size": 1}, lambda *_: None)
    ctx.engine.dispose()
    fork = multiprocessing.get_context("fork")
    started = time.perf_counter()
    with fork.Pool(processes) as pool:
        parts = pool.starmap(
            commit_chunks,
            [(name, view.id, list(range(p, chunks, processes))) for p in range(processes)],
        )
    took = time.perf_counter() - started
    done = ledger.get(context(name), view.id)
    if done.status != "succeeded" or done.result != chunks * (chunks + 1) // 2:
        raise RuntimeError(f"{name}: job {done.status}, result {done.result}, {done.error}")
    locks = sum(part["locks"] for part in parts)
    held = sum(part["held_s"] for part in parts)
    return {
        "chunks": chunks,
        "chunks_per_s": chunks / took,
        "locks": locks,
        "locks_per_commit": locks / chunks,
        "lock_ms_per_commit": held * 1000 / chunks,
        "lock_ms_per_lock": held * 1000 / locks if locks else 0.0,
    }


def context(name: str) -> Any:
    from batchapp.jobs import JobContext
    from batchapp.settings import load
    from batchapp.storage.engines import engine_for

    settings = load()
    # As before: a ping at each checkout; now a pool process's engine pings none.
    engine = engine_for(settings.database_url, pool_pre_ping=name == "job_row_per_commit")
    return JobContext(settings=settings, engine=engine)


def commit_chunks(name: str, job_id: str, indexes: list[int]) -> JSONDict:
    """In a pool process: commit ``indexes`` of the job, timing the job row's lock."""
    from batchapp import ledger

    ctx = context(name)
    lock = LockClock(ctx.engine)
    commit: Callable[[Any, str, int], Any] = (
        commit_under_job_lock if name == "job_row_per_commit" else ledger.run_chunk
    )
    for index in indexes:
        commit(ctx, job_id, index)
    return {"locks": lock.locks, "held_s": lock.held_s}


class LockClock:
    """Time from each ``FOR UPDATE`` on the jobs table to the end of its transaction."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.locks = 0
        self.held_s = 0.0
        self._since: dict[int, float] = {}
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def ended(dbapi_connection: Any, end: Callable[[Any], None]) -> None:
            end(dbapi_connection)
            since = self._since.pop(id(dbapi_connection), None)
            if since is not None:
                self.locks += 1
                self.held_s += time.perf_counter() - since

        dialect.do_commit = lambda dbapi_connection: ended(dbapi_connection, commit)
        dialect.do_rollback = lambda dbapi_connection: ended(dbapi_connection, rollback)

        @event.listens_for(engine, "before_cursor_execute")
        def locking(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if "FOR UPDATE" in statement and "batch_jobs" in statement:
                # The pooled connection: what the dialect's commit and rollback are given.
                key = id(connection.connection)
                self._since.setdefault(key, time.perf_counter())


def commit_under_job_lock(ctx: Any, job_id: str, index: int) -> None:
    """A chunk's commit as batchapp made it before (the reference): under the job row's lock."""
    from batchapp.jobs import get_job
    from batchapp.jobs.base import Chunk
    from batchapp.ledger import statements, transitions
    from batchapp.storage.engines import read_transaction, write_transaction

    key = {"b_job_id": job_id, "b_idx": index}
    with read_transaction(ctx.engine) as connection:
        found = connection.execute(statements.FIND_CHUNK, key).first()
    job = get_job(found.name)
    chunk = Chunk(job_id, found.params, found.spec, job.prepare(found.params, found.spec, ctx))
    with write_transaction(ctx.engine) as connection:
        outcome = job.commit(connection, chunk, ctx)
        locked = transitions.lock_job(connection, job_id)
        if not transitions.finish_chunk(connection, job_id, index, outcome, redelivered=False):
            raise RuntimeError(f"chunk {index} was not pending")
        transitions.settle(connection, locked)


def targets(f: JSONDict, quick: bool) -> list[Target]:
    before, after = f["chunk_lock"]["job_row_per_commit"], f["chunk_lock"]["chunk_row_guard"]
    lock = Target(
        f"job row lock per chunk commit, PostgreSQL, {after['chunks']:,} chunks, 2 processes",
        f"{after['lock_ms_per_commit']:.3f} ms ({after['locks_per_commit']:.4f} locks)",
        f"before {before['lock_ms_per_commit']:.2f} ms ({before['locks_per_commit']:.0f} lock)",
        f["ratios"]["chunk_lock_after_over_before"],
    )
    rate = Target(
        "chunk commits/s of one job, PostgreSQL, ledger only",
        f"{after['chunks_per_s']:.0f}/s",
        f"before {before['chunks_per_s']:.0f}/s",
        f["ratios"]["chunks_per_s_after_over_before"],
    )
    return [
        timing(lock, "<=", LOCK_MS_TARGET, quick, figure=after["lock_ms_per_commit"]),
        timing(rate, ">=", 1.0, quick),
    ]
