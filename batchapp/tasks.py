"""Celery tasks: thin glue that checks arguments and calls plain job and ledger code."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from amqp.exceptions import AMQPError
from celery import Task
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from batchapp import ledger
from batchapp.broker import queues
from batchapp.broker.publishing import BatchappTask, BrokerTimeout, TaskMessages, publish_batch
from batchapp.celery import app, settings
from batchapp.jobs import JOBS, ParamError, get_job
from batchapp.runtime import job_context, ledger_here
from batchapp.storage.engines import is_locked
from batchapp.sums import MAX_N, sum_to
from batchapp.validate import require_int, require_str

# A database that is briefly unreachable or busy is worth another try; anything else is not.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
# What can go wrong with a batch publish that a one-by-one publish with retries may survive.
BATCH_ERRORS = (KombuOperationalError, AMQPError, OSError, TimeoutError)
# Recording a chunk's failure is tried this often (backing off from 0.2 s) before it is left
# to the reconciler.
RECORD_ATTEMPTS = 5

logger = logging.getLogger(__name__)

BatchappTask.confirm_timeout = settings.broker_timeout


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
            record_failure(job_id, index, exc, redelivered=_redelivered(self.request))


def record_failure(job_id: str, index: int, exc: BaseException, *, redelivered: bool) -> None:
    """Record a chunk's failure, retrying a busy or unreachable database; if it stays so, the
    reconciler finishes the job later. Runs in the worker's main process for a hard time limit."""
    for attempt in range(RECORD_ATTEMPTS):
        try:
            with ledger_here() as ctx:
                ledger.record_chunk_failure(ctx, job_id, index, exc, redelivered=redelivered)
            return
        except TRANSIENT_ERRORS as error:
            if attempt == RECORD_ATTEMPTS - 1:
                logger.error(
                    "job %s chunk %s: could not record its failure (%r): %s; "
                    "the reconciler will finish the job",
                    job_id,
                    index,
                    exc,
                    error,
                )
                return
            time.sleep(0.2 * 2**attempt)


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
    try:
        return ledger.run_chunk(
            job_context(),
            job_id,
            index,
            redelivered=_redelivered(self.request),
            delivery=_delivery(self.request),
        )
    except ledger.UnknownJobError as exc:
        # Most likely the caller and this worker use different ledgers.
        where = make_url(settings.database_url).render_as_string(hide_password=True)
        logger.error(
            "%s at %s (do caller and worker share BATCHAPP_DATABASE_URL? was the job removed "
            "by cleanup?); dropped",
            exc,
            where,
        )
        return f"{exc} at {where}; dropped"
    except OperationalError as exc:
        if not is_locked(exc):
            raise
        return send_again_when_locked(job_id, index, exc)


def send_again_when_locked(job_id: str, index: int, exc: OperationalError) -> str:
    """Send a chunk again that waited SQLite's whole busy timeout for the write lock (another
    process holds it: a writer paused inside its transaction): nothing of it was committed.

    However long the lock is held, this is no failure: each try waits the busy timeout for the
    lock, which spaces the tries, and a new message counts no retries (Celery's retries would
    fail the chunk after ``max_retries``, and the broker guard dead-letters a message past its
    cap). The new message is confirmed before this one is acknowledged, so the chunk is never
    lost; delivered twice, the ledger drops it. If it cannot be sent, the error is the task's.
    """
    try:
        publish_chunks(job_id, [index], queue_of(job_id))
    except Exception as error:
        raise exc from error
    logger.warning(
        "job %s chunk %s: the ledger stayed locked by another writer (%s); sent again",
        job_id,
        index,
        exc.orig,
    )
    return f"job {job_id} chunk {index}: the ledger is locked; sent again"


@app.task(name="batchapp.tasks.run_periodic", bind=True, throws=(ParamError,))
def run_periodic(self: Task, job_name: str, **params: Any) -> str:
    """Start a periodic job, or record it skipped while its previous run is still going.

    The job's key is its tick's task id: a tick that arrives twice (a beat that took over sends
    again the last leader's unconfirmed send) finds the job its first arrival started."""
    require_str("run_periodic", "job_name", job_name)
    key = f"tick:{self.request.id}" if self.request.id else None
    view = submit_job(job_name, params, exclusive=True, key=key)
    return f"{view.name} {view.id}: {view.status}"


@app.task(name="batchapp.tasks.reconcile")
def reconcile() -> str:
    """Finish or restart running jobs that nothing has moved for a task time limit."""
    done = ledger.reconcile(
        job_context(), lambda job_id, indexes: publish_chunks(job_id, indexes, queue_of(job_id))
    )
    for job_id, what in done.items():
        logger.warning("reconciler: job %s %s", job_id, what)
    return f"reconciled {len(done)} job(s)"


def publish_chunks(job_id: str, indexes: Sequence[int], queue: str = queues.CHUNKS) -> None:
    """One message per chunk through one producer, confirmed by RabbitMQ as one batch."""

    def publish(producer: Any) -> None:
        messages = TaskMessages(run_chunk, queue)
        producer.maybe_declare(messages.queue)
        for index in indexes:
            messages.send(producer, (job_id, index))

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
                    (job_id, index),
                    producer=producer,
                    confirm_timeout=settings.broker_timeout,
                    queue=queue,
                )


def submit_job(
    name: str,
    params: Mapping[str, Any],
    *,
    exclusive: bool = False,
    key: str | None = None,
) -> ledger.JobView:
    """Plan, record and publish a job; with a ``key``, the job running or succeeded with that
    key instead, if there is one (its ``existing`` is true). See :func:`batchapp.ledger.submit`."""
    publish = partial(publish_chunks, queue=get_job(name).queue)
    return ledger.submit(job_context(), name, params, publish, exclusive=exclusive, key=key)


def retry_job(job_id: str) -> list[int]:
    """Publish again the chunks of a job that did not finish; see :func:`ledger.retry`."""
    publish = partial(publish_chunks, queue=queue_of(job_id))
    return ledger.retry(job_context(), job_id, publish)


def queue_of(job_id: str) -> str:
    """The queue of the job's chunks."""
    return chunk_queue(ledger.get(job_context(), job_id).name)


def chunk_queue(job_name: str) -> str:
    """The queue a job's chunks travel on (a job this process does not know: the chunks
    queue). Every queue is declared in every configuration (routing.py)."""
    job = JOBS.get(job_name)
    return queues.CHUNKS if job is None else job.queue


def _redelivered(request: Any) -> bool:
    return bool((request.delivery_info or {}).get("redelivered"))


def _delivery(request: Any) -> int | None:
    """Which delivery of the message this is, when the broker counts (quorum queues)."""
    returned = getattr(request, "x-delivery-count", None)
    if isinstance(returned, int) and not isinstance(returned, bool) and returned >= 0:
        return returned + 1
    return None
