"""``/metrics``: batchapp in Prometheus' text format, read from the ledger and the broker at each
scrape, so it holds for any number of workers and pool processes (no per-process counters).

Every figure is a gauge: the ledger's counts go down as well as up (a retry sets failed chunks
pending again, the cleanup deletes old jobs), which a counter must never do. No label carries a
job id; ``job_name`` is the job type (``job`` is Prometheus' own target label). See
docs/metrics.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from batchapp import service

__all__ = ["SCRAPE_BROKER_TIMEOUT_S", "render_metrics"]

logger = logging.getLogger(__name__)

# Well inside Prometheus' default scrape_timeout (10 s): a broker that does not answer costs a
# scrape this much, and the scrape still reports the ledger with batchapp_broker_up 0.
SCRAPE_BROKER_TIMEOUT_S = 3.0

ReadBroker = Callable[[float], dict[str, service.QueueDepth]]


def render_metrics(
    ctx: service.JobContext,
    *,
    read_broker: ReadBroker = service.queue_depths,
    now: datetime | None = None,
) -> tuple[bytes, str]:
    """The metrics page: (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(ctx, read_broker, now))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Scrape(Collector):
    """Reads the ledger and the broker when collected: once per scrape."""

    def __init__(
        self, ctx: service.JobContext, read_broker: ReadBroker, now: datetime | None
    ) -> None:
        self.ctx = ctx
        self.read_broker = read_broker
        self.now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._ledger()
        yield from self._broker()

    def _ledger(self) -> Iterator[GaugeMetricFamily]:
        try:
            figures = service.ledger_figures(self.ctx)
            leader = service.beat_leader(self.ctx)
        except SQLAlchemyError as exc:
            logger.warning("metrics: the ledger database did not answer: %s", _line(exc))
            yield _gauge("batchapp_ledger_up", "Whether the ledger database answered.", 0)
            return
        now = self.now or datetime.now(UTC).replace(tzinfo=None)
        yield _gauge("batchapp_ledger_up", "Whether the ledger database answered.", 1)
        yield _by_status(
            "batchapp_jobs", "Jobs in the ledger, by job name and status.", figures.jobs
        )
        yield _by_status(
            "batchapp_chunks",
            "Chunks of the jobs in the ledger, by job name and chunk status.",
            figures.chunks,
        )
        yield _by_status(
            "batchapp_items",
            "Items (rows, numbers) of the jobs in the ledger: done, and rejected as bad input.",
            figures.items,
        )
        yield _by_status(
            "batchapp_running_chunks",
            "Chunks of the running jobs, by job name and chunk status.",
            figures.running_chunks,
        )
        progress = GaugeMetricFamily(
            "batchapp_running_progress_ratio",
            "Share of the running jobs' chunks that finished (done or failed), by job name.",
            labels=["job_name"],
        )
        for name, counts in sorted(figures.running_chunks.items()):
            total = sum(counts.values())
            finished = counts.get("done", 0) + counts.get("failed", 0)
            progress.add_metric([name], finished / total if total else 0.0)
        yield progress
        last = GaugeMetricFamily(
            "batchapp_job_last_success_timestamp_seconds",
            "When a job of this name last succeeded (Unix time), among the jobs in the ledger.",
            labels=["job_name"],
        )
        age = GaugeMetricFamily(
            "batchapp_job_last_success_age_seconds",
            "Seconds since a job of this name last succeeded, among the jobs in the ledger.",
            labels=["job_name"],
        )
        for name, finished_at in sorted(figures.last_success.items()):
            last.add_metric([name], _unix(finished_at))
            age.add_metric([name], max((now - finished_at).total_seconds(), 0.0))
        yield last
        yield age
        yield _gauge(
            "batchapp_beat_lease_held",
            "Whether a beat holds the lease (1: one beat is sending ticks; 0: none is).",
            int(leader is not None),
        )

    def _broker(self) -> Iterator[GaugeMetricFamily]:
        timeout = min(self.ctx.settings.broker_timeout, SCRAPE_BROKER_TIMEOUT_S)
        try:
            depths = self.read_broker(timeout)
        except Exception as exc:  # whatever the broker did, the scrape reports it as down
            logger.warning("metrics: the broker did not answer: %s", _line(exc))
            yield _gauge("batchapp_broker_up", "Whether the broker answered.", 0)
            return
        yield _gauge("batchapp_broker_up", "Whether the broker answered.", 1)
        ready = GaugeMetricFamily(
            "batchapp_queue_messages_ready",
            "Messages waiting in a work queue for a worker (not those a worker holds unacked).",
            labels=["queue"],
        )
        consumers = GaugeMetricFamily(
            "batchapp_queue_consumers", "Consumers of a work queue.", labels=["queue"]
        )
        for name in service.WORK_QUEUES:
            if name in depths:
                ready.add_metric([name], depths[name].ready)
                consumers.add_metric([name], depths[name].consumers)
        yield ready
        yield consumers
        dead = depths.get(service.DEAD_LETTER_QUEUE)
        yield _gauge(
            "batchapp_dead_letters",
            f"Messages in the dead-letter queue {service.DEAD_LETTER_QUEUE}.",
            dead.ready if dead else 0,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_status(
    name: str, documentation: str, values: dict[str, dict[str, int]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["job_name", "status"])
    for job_name, by_status in sorted(values.items()):
        for status, value in sorted(by_status.items()):
            family.add_metric([job_name, status], value)
    return family


def _unix(naive_utc: datetime) -> float:
    return (naive_utc - datetime(1970, 1, 1)).total_seconds()


def _line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
