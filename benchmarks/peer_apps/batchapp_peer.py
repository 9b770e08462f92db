"""batchapp itself, configured only by the ``BATCHAPP_*`` variables peers.py sets."""

from __future__ import annotations

from peer_apps import RESULT_TIMEOUT_S, delay_all_then_get, delay_and_get


def call(n: int) -> int:
    from batchapp.tasks import calculate_sum

    return delay_and_get(calculate_sum, n)


def call_many(ns: list[int]) -> list[int]:
    from batchapp.tasks import calculate_sum

    return delay_all_then_get(calculate_sum, ns)


def map_reduce(n: int, chunk_size: int) -> int:
    """``parallel_sum`` through the ledger; the chunk that finishes last runs the reduce."""
    from batchapp import ledger
    from batchapp.service import job_context, submit_job

    view = submit_job("parallel_sum", {"n": n, "chunk_size": chunk_size})
    done = ledger.wait(job_context(), view.id, timeout=RESULT_TIMEOUT_S)
    if done.status != "succeeded":
        raise RuntimeError(f"parallel_sum job {view.id} {done.status}: {done.error}")
    return int(done.result)
