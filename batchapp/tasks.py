"""Celery tasks: thin glue that checks arguments and calls plain job and ledger code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from amqp.exceptions import AMQPError
from celery import Task
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import InterfaceError, OperationalError

from batchapp import ledger
from batchapp.celery import app, settings
from batchapp.db import engine_for
from batchapp.jobs import JobContext, ParamError
from batchapp.publishing import BatchappTask, BrokerTimeout, publish_batch
from batchapp.sums import MAX_N, sum_to
from batchapp.validate import require_int, require_str

# A database that is briefly unreachable or busy is worth another try; anything else is not.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
# What can go wrong with a batch publish that a one-by-one publish with retries may survive.
BATCH_ERRORS = (KombuOperationalError, AMQPError, OSError, TimeoutError)


@cache
def job_context() -> JobContext:
    """This process's view of the batchapp database (engines are per process; see db.py)."""
    return JobContext(
        settings=settings,
        engine=engine_for(settings.database_url),
        expire_results=lambda: app.backend.cleanup(),
    )


@app.task(name="batchapp.tasks.calculate_sum", ignore_result=False, throws=(TypeError, ValueError))
def calculate_sum(n: int) -> int:
    """The sum 1..n (0 for n <= 0), exact, computed in O(1)."""
    return sum_to(require_int("calculate_sum", "n", n, maximum=MAX_N))


class ChunkTask(BatchappTask):
    """Records a chunk's final failure in the ledger, so its job can finish as failed."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: Any,
    ) -> None:
        job_id, index = [*args, kwargs.get("job_id"), kwargs.get("index")][:2]
        if isinstance(job_id, str) and isinstance(index, int):
            ledger.record_chunk_failure(
                job_context(), job_id, index, exc, redelivered=_redelivered(self.request)
            )


@app.task(
    bind=True,
    base=ChunkTask,
    name="batchapp.tasks.run_chunk",
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_backoff_max=60,
    max_retries=5,
)
def run_chunk(self: Task, job_id: str, index: int) -> str:
    """Run one chunk of a batch job and record it in the ledger."""
    require_str("run_chunk", "job_id", job_id)
    require_int("run_chunk", "index", index, minimum=0)
    return ledger.run_chunk(job_context(), job_id, index, redelivered=_redelivered(self.request))


@app.task(name="batchapp.tasks.run_periodic", throws=(ParamError,))
def run_periodic(job_name: str, **params: Any) -> str:
    """Start a periodic job, or record it skipped while its previous run is still going."""
    require_str("run_periodic", "job_name", job_name)
    view = submit_job(job_name, params, exclusive=True)
    return f"{view.name} {view.id}: {view.status}"


def publish_chunks(job_id: str, indexes: Sequence[int]) -> None:
    """One message per chunk through one producer, confirmed by RabbitMQ as one batch."""

    def publish(producer: Any) -> int:
        for index in indexes:
            run_chunk.apply_async((job_id, index), producer=producer, retry=False)
        return len(indexes)

    try:
        publish_batch(app, publish, timeout=settings.broker_timeout)
    except BrokerTimeout:
        # The broker takes messages but does not answer: publishing again would wait the same.
        raise
    except BATCH_ERRORS:
        # Some may be queued already; a chunk delivered twice is dropped by the ledger, so
        # sending all of them again, each confirmed with retries, loses and duplicates nothing.
        with app.producer_or_acquire() as producer:
            for index in indexes:
                run_chunk.apply_async(
                    (job_id, index), producer=producer, confirm_timeout=settings.broker_timeout
                )


def submit_job(name: str, params: Mapping[str, Any], *, exclusive: bool = False) -> ledger.JobView:
    """Plan, record and publish a job; see :func:`batchapp.ledger.submit`."""
    return ledger.submit(job_context(), name, params, publish_chunks, exclusive=exclusive)


def retry_job(job_id: str) -> list[int]:
    """Publish again the chunks of a job that did not finish; see :func:`ledger.retry`."""
    return ledger.retry(job_context(), job_id, publish_chunks)


def _redelivered(request: Any) -> bool:
    return bool((request.delivery_info or {}).get("redelivered"))
