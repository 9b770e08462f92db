"""/metrics from a SQLite ledger with jobs in every state, and a broker that is a stand-in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from batchapp import ledger
from batchapp.beat import leases
from batchapp.beat.scheduler import LEASE
from batchapp.broker.depths import QueueDepth
from batchapp.broker.queues import CALLS, CHUNKS, DEAD, PERIODIC
from batchapp.jobs import JobContext
from batchapp.jobs.base import utcnow
from batchapp.jobs.sales_csv import write_sample
from batchapp.settings import load
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema
from batchapp.web.metrics import render_metrics

FAMILIES = {
    "batchapp_ledger_up",
    "batchapp_jobs",
    "batchapp_chunks",
    "batchapp_items",
    "batchapp_running_chunks",
    "batchapp_running_progress_ratio",
    "batchapp_job_last_success_timestamp_seconds",
    "batchapp_job_last_success_age_seconds",
    "batchapp_beat_lease_held",
    "batchapp_broker_up",
    "batchapp_queue_messages_ready",
    "batchapp_queue_consumers",
    "batchapp_dead_letters",
}
DEPTHS = {
    CALLS: QueueDepth(CALLS, 2, 1),
    PERIODIC: QueueDepth(PERIODIC, 0, 1),
    CHUNKS: QueueDepth(CHUNKS, 57, 3),
    DEAD: QueueDepth(DEAD, 4, 0),
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def nothing(job_id: str, indexes: Sequence[int]) -> None:
    """Publishing stands in for the broker: the test runs the chunks itself."""


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    settings = load({"BATCHAPP_DATA_DIR": str(tmp_path)})
    return JobContext(settings=settings, engine=engine_for(settings.database_url))


@pytest.fixture
def jobs(ctx: JobContext) -> dict[str, ledger.JobView]:
    """parallel_sum jobs succeeded, failed, running and cancelled; imports with rejected rows,
    one succeeded and one running."""
    made = {}
    made["succeeded"] = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, nothing)
    for index in range(3):
        ledger.run_chunk(ctx, made["succeeded"].id, index)
    made["failed"] = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, nothing)
    ledger.run_chunk(ctx, made["failed"].id, 0)
    ledger.record_chunk_failure(ctx, made["failed"].id, 1, RuntimeError("disk on fire"))
    ledger.run_chunk(ctx, made["failed"].id, 2)
    made["running"] = ledger.submit(ctx, "parallel_sum", {"n": 40, "chunk_size": 10}, nothing)
    ledger.run_chunk(ctx, made["running"].id, 0)
    made["cancelled"] = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, nothing)
    ledger.run_chunk(ctx, made["cancelled"].id, 0)
    ledger.cancel(ctx, made["cancelled"].id)

    write_sample(ctx.settings.data_dir / "s.csv", 200, 0.2)
    params = {"path": "s.csv", "chunk_rows": 64}
    made["import"] = ledger.submit(ctx, "import_csv", params, nothing)
    for index in range(made["import"].chunks_total):
        ledger.run_chunk(ctx, made["import"].id, index)
    made["import running"] = ledger.submit(ctx, "import_csv", params, nothing)
    ledger.run_chunk(ctx, made["import running"].id, 0)
    return {what: ledger.get(ctx, view.id) for what, view in made.items()}


def scrape(ctx: JobContext, read_broker: Any = None, **options: Any) -> tuple[str, Samples]:
    body, content_type = render_metrics(
        ctx, read_broker=read_broker or (lambda timeout: DEPTHS), **options
    )
    assert content_type == CONTENT_TYPE_LATEST
    text = body.decode()
    return text, samples(text)


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by_label(found: Samples, name: str, label: str, **fixed: str) -> dict[str, float]:
    """``name``'s samples whose labels include ``fixed``, keyed by their ``label``."""
    return {
        dict(labels)[label]: value
        for (sample, labels), value in found.items()
        if sample == name and fixed.items() <= dict(labels).items()
    }


def test_every_family_is_a_gauge_and_parses(ctx: JobContext, jobs: Any) -> None:
    text, _ = scrape(ctx)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}

    assert families == dict.fromkeys(FAMILIES, "gauge")


def test_jobs_are_counted_by_name_and_status(ctx: JobContext, jobs: Any) -> None:
    _, found = scrape(ctx)

    assert by_label(found, "batchapp_jobs", "status", job_name="parallel_sum") == {
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
        "skipped": 0,
    }
    assert by_label(found, "batchapp_jobs", "status", job_name="import_csv") == {
        "running": 1,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "skipped": 0,
    }


def test_chunks_and_items_add_up_over_finished_and_running_jobs(
    ctx: JobContext, jobs: dict[str, ledger.JobView]
) -> None:
    imports = [jobs["import"], jobs["import running"]]
    _, found = scrape(ctx)

    # succeeded 3 done; failed 2 done + 1 failed; running 1 done + 3 pending; cancelled 1 + 1.
    assert by_label(found, "batchapp_chunks", "status", job_name="parallel_sum") == {
        "done": 7,
        "failed": 1,
        "pending": 3,
        "cancelled": 1,
    }
    assert by_label(found, "batchapp_items", "status", job_name="parallel_sum") == {
        "done": 30 + 20 + 10 + 10,
        "rejected": 0,
    }
    assert by_label(found, "batchapp_items", "status", job_name="import_csv") == {
        "done": sum(v.items_done for v in imports),
        "rejected": sum(v.items_failed for v in imports),
    }
    assert jobs["import running"].items_failed > 0  # counted from its chunk rows


def test_running_jobs_show_their_chunks_and_progress(
    ctx: JobContext, jobs: dict[str, ledger.JobView]
) -> None:
    running = jobs["import running"]
    _, found = scrape(ctx)

    assert by_label(found, "batchapp_running_chunks", "status", job_name="parallel_sum") == {
        "done": 1,
        "pending": 3,
        "failed": 0,
        "cancelled": 0,
    }
    assert by_label(found, "batchapp_running_progress_ratio", "job_name") == {
        "parallel_sum": 0.25,
        "import_csv": 1 / running.chunks_total,
    }


def test_seconds_since_the_last_success_per_job_name(
    ctx: JobContext, jobs: dict[str, ledger.JobView]
) -> None:
    finished = {
        "parallel_sum": jobs["succeeded"].finished_at,
        "import_csv": jobs["import"].finished_at,
    }
    now = max(t for t in finished.values() if t) + timedelta(seconds=90)
    _, found = scrape(ctx, now=now)

    assert by_label(found, "batchapp_job_last_success_age_seconds", "job_name") == {
        name: (now - t).total_seconds() for name, t in finished.items() if t
    }
    assert by_label(found, "batchapp_job_last_success_timestamp_seconds", "job_name") == {
        name: t.replace(tzinfo=UTC).timestamp() for name, t in finished.items() if t
    }


def test_no_sample_carries_a_job_id(ctx: JobContext, jobs: dict[str, ledger.JobView]) -> None:
    text, found = scrape(ctx)

    assert {name for _, labels in found for name, _ in labels} == {"job_name", "status", "queue"}
    assert not [view.id for view in jobs.values() if view.id in text]


def test_queues_and_dead_letters_come_from_the_broker(ctx: JobContext) -> None:
    _, found = scrape(ctx)

    assert found[("batchapp_broker_up", ())] == 1
    assert by_label(found, "batchapp_queue_messages_ready", "queue") == {
        CALLS: 2,
        PERIODIC: 0,
        CHUNKS: 57,
    }
    assert by_label(found, "batchapp_queue_consumers", "queue") == {
        CALLS: 1,
        PERIODIC: 1,
        CHUNKS: 3,
    }
    assert found[("batchapp_dead_letters", ())] == 4


def test_a_broker_that_does_not_answer_is_down_and_the_ledger_still_shows(
    ctx: JobContext, jobs: Any
) -> None:
    timeouts: list[float] = []

    def down(timeout: float) -> dict[str, QueueDepth]:
        timeouts.append(timeout)
        raise ConnectionRefusedError(111, "Connection refused")

    text, found = scrape(ctx, read_broker=down)

    assert found[("batchapp_broker_up", ())] == 0
    assert "batchapp_queue_messages_ready" not in text
    assert by_label(found, "batchapp_jobs", "status", job_name="parallel_sum")["running"] == 1
    assert timeouts and 0 < timeouts[0] <= 10


def test_beat_lease_is_held_only_while_a_beat_holds_it(ctx: JobContext) -> None:
    ensure_schema(ctx.engine)
    held = ("batchapp_beat_lease_held", ())

    assert scrape(ctx)[1][held] == 0
    assert leases.acquire(ctx.engine, LEASE, "beat-1@host", timedelta(seconds=60))
    assert scrape(ctx)[1][held] == 1
    leases.acquire(
        ctx.engine, LEASE, "beat-1@host", timedelta(seconds=60), utcnow() - timedelta(minutes=5)
    )
    assert scrape(ctx)[1][held] == 0  # expired


def test_an_empty_ledger_shows_every_family_with_no_job_samples(ctx: JobContext) -> None:
    text, found = scrape(ctx)

    assert {f.name for f in text_string_to_metric_families(text)} == FAMILIES
    assert not by_label(found, "batchapp_jobs", "status")


@pytest.fixture
def statements(ctx: JobContext) -> Iterator[list[str]]:
    ensure_schema(ctx.engine)
    seen: list[str] = []

    def note(*args: Any) -> None:
        seen.append(args[2])

    event.listen(ctx.engine, "before_cursor_execute", note)
    yield seen
    event.remove(ctx.engine, "before_cursor_execute", note)


def test_a_scrape_runs_the_same_few_statements_whatever_the_number_of_jobs(
    ctx: JobContext, statements: list[str]
) -> None:
    counted = []
    for _ in range(2):
        for _ in range(20):
            view = ledger.submit(ctx, "parallel_sum", {"n": 30, "chunk_size": 10}, nothing)
            ledger.run_chunk(ctx, view.id, 0)
        statements.clear()
        scrape(ctx)
        counted.append(len(statements))

    assert counted == [3, 3]  # the ledger, the database's clock and the beat lease


def test_a_queue_the_broker_has_not_declared_has_no_sample(ctx: JobContext) -> None:
    _, found = scrape(ctx, read_broker=lambda timeout: {CALLS: QueueDepth(CALLS, 5, 1)})

    assert by_label(found, "batchapp_queue_messages_ready", "queue") == {CALLS: 5}
    assert found[("batchapp_dead_letters", ())] == 0
