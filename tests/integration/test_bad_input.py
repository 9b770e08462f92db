"""Bad messages, task arguments and files: each refused with a clear error, worker still up.

The tests of tests/unit/test_bad_input.py that take a ``chunk_ctx`` are collected here again,
on PostgreSQL.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import NotRegistered
from kombu import Producer
from sqlalchemy import select, text

from batchapp import ledger
from batchapp.broker import queues, routing
from batchapp.celery import app
from batchapp.celery import settings as app_settings
from batchapp.cli.processes import CeleryProcess
from batchapp.jobs import JobContext, import_rows
from batchapp.jobs.sales_csv import write_sample
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema, sales_rejects
from batchapp.tasks import calculate_sum, publish_chunks, run_chunk, run_periodic
from tests.integration.conftest import RESULT_TIMEOUT, RUN_DATA_DIR, Stack
from tests.unit.test_bad_input import (  # noqa: F401 - tests collected here, on PostgreSQL
    HEADER,
    repeated_ids_file,
    stored,
    test_an_order_id_repeated_in_a_file_keeps_its_first_line_whatever_the_chunk_order,
    test_ids_imported_by_an_earlier_job_stay_duplicates,
    test_imported_plus_rejected_is_every_line_whatever_the_bytes,
)

GOOD = "S9-{0},2026-11-25T09:00:00+09:00,SEOUL-01,SKU-1,1,1.00\n"


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[CeleryProcess]:
    yield stack.worker()


def still_serving() -> bool:
    return bool(calculate_sum.delay(3).get(timeout=RESULT_TIMEOUT) == 6)


def publish_raw(
    body: bytes,
    content_type: str,
    task: str = "batchapp.tasks.calculate_sum",
    task_id: str | None = None,
) -> str:
    task_id = task_id or str(uuid.uuid4())
    with app.connection_for_write() as connection:
        Producer(connection.default_channel).publish(
            body,
            exchange=routing.EXCHANGE,
            routing_key=queues.CALLS,
            content_type=content_type,
            content_encoding="utf-8" if "json" in content_type else "binary",
            headers={"task": task, "id": task_id, "lang": "py", "argsrepr": "", "kwargsrepr": ""},
        )
    return task_id


class Touch:
    """Unpickling this creates a file: proof of whether a pickle was ever loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_unknown_task_name_fails_that_task_only(worker: CeleryProcess) -> None:
    result = app.send_task("batchapp.tasks.no_such_task", args=[1])

    with pytest.raises(NotRegistered):
        result.get(timeout=RESULT_TIMEOUT)
    assert "task 'batchapp.tasks.no_such_task' is not served here" in worker.log()
    assert still_serving()


def test_a_message_forged_with_a_callers_id_does_not_change_what_that_caller_reads(
    worker: CeleryProcess,
) -> None:
    result = calculate_sum.apply_async((100,), countdown=5)
    publish_raw(b"[[], {}, {}]", "application/json", task="nope.unknown", task_id=result.id)
    worker.wait_for_log(f"(task 'nope.unknown', id {result.id!r})", timeout=RESULT_TIMEOUT)

    # A caller reading in the window before its task runs, as one polling ready() does.
    states_seen = [result.state]
    while not result.ready():
        states_seen.append(result.state)
        time.sleep(0.05)
    assert result.get(timeout=RESULT_TIMEOUT) == 5050
    assert set(states_seen) == {"PENDING"}


def test_body_that_is_not_json_is_refused(worker: CeleryProcess) -> None:
    publish_raw(b"{this is not json", "application/json")

    worker.wait_for_log("into batchapp.dead: body is not JSON", timeout=RESULT_TIMEOUT)
    assert still_serving()


def test_pickle_message_is_never_deserialized(worker: CeleryProcess, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    publish_raw(pickle.dumps(((Touch(marker),), {}, {})), "application/x-python-serialize")

    worker.wait_for_log("content type 'application/x-python-serialize'", RESULT_TIMEOUT)
    assert still_serving()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((123, 0), "run_chunk: job_id must be a str, got int 123"),
        (("abc", "0"), "run_chunk: index must be an int, got str '0'"),
        (("abc", -1), "run_chunk: index must be >= 0, got -1"),
    ],
)
def test_bad_chunk_arguments_are_refused_by_name(
    worker: CeleryProcess, args: tuple[object, object], message: str
) -> None:
    run_chunk.delay(*args)

    worker.wait_for_log(message, timeout=RESULT_TIMEOUT)
    assert still_serving()


def test_chunk_of_an_unknown_job_is_dropped_with_a_reason(worker: CeleryProcess) -> None:
    run_chunk.delay("0" * 32, 0)

    worker.wait_for_log(f"job {'0' * 32} chunk 0 is not in the ledger", timeout=RESULT_TIMEOUT)
    assert still_serving()


def test_periodic_run_of_an_unknown_job_is_refused(worker: CeleryProcess) -> None:
    run_periodic.delay("nosuch")

    worker.wait_for_log("unknown job 'nosuch'", timeout=RESULT_TIMEOUT)
    assert still_serving()


def import_file(stack: Stack, name: str, content: bytes) -> ledger.JobView:
    (RUN_DATA_DIR / name).write_bytes(content)
    view = ledger.submit(stack.ctx, "import_csv", {"path": name}, publish_chunks)
    return ledger.wait(stack.ctx, view.id, timeout=RESULT_TIMEOUT)


def rejects(stack: Stack, job_id: str) -> dict[int, str]:

    with stack.ctx.engine.connect() as connection:
        rows = connection.execute(
            select(sales_rejects.c.line, sales_rejects.c.reason).where(
                sales_rejects.c.job_id == job_id
            )
        )
        return {line: reason for line, reason in rows}


def test_header_only_file_imports_nothing_and_succeeds(stack: Stack, worker: CeleryProcess) -> None:
    view = import_file(stack, "header-only.csv", HEADER.encode())

    assert (view.status, view.result["rows"]) == ("succeeded", 0)


def test_invalid_utf8_ragged_and_huge_lines_are_rejected_one_by_one(
    stack: Stack, worker: CeleryProcess
) -> None:
    content = (
        HEADER.encode()
        + GOOD.format(1).encode()
        + b"S9-2,2026-11-25T09:00:00+09:00,SEOUL-\xff\xfe,SKU-1,1,1.00\n"
        + b"S9-3,2026-11-25T09:00:00+09:00,SEOUL-01\n"
        + b"S9-4,"
        + b"x" * (10 * 1024 * 1024)
        + b"\n"
        + GOOD.format(5).encode()
        + b"S9-6,2026-11-25T09:00:00+09:00,SEOUL-01,SKU-1,1e3,1.00"
    )
    view = import_file(stack, "mixed.csv", content)
    reasons = rejects(stack, view.id)

    assert view.result == {"rows": 6, "imported": 2, "rejected": 4, "new": 2, "duplicates": 0}
    assert reasons[3].startswith("invalid UTF-8 at byte")
    assert reasons[4] == "expected 6 fields, got 3"
    assert reasons[5].startswith("line longer than 65,536 bytes")
    assert reasons[7] == "quantity: not a whole number: '1e3'"
    assert still_serving()


def test_a_file_deleted_after_submit_fails_the_job_with_the_reason(
    stack: Stack, worker: CeleryProcess
) -> None:
    write_sample(RUN_DATA_DIR / "gone.csv", 10)
    view = ledger.submit(stack.ctx, "import_csv", {"path": "gone.csv"}, lambda *_: None)
    (RUN_DATA_DIR / "gone.csv").unlink()
    publish_chunks(view.id, [0])
    done = ledger.wait(stack.ctx, view.id, timeout=RESULT_TIMEOUT)

    assert done.status == "failed"
    assert "file not found: 'gone.csv'" in (done.error or "")
    assert still_serving()


@pytest.fixture(scope="module", params=["postgresql"])
def chunk_ctx(postgres_url: str) -> JobContext:
    """A ledger on PostgreSQL, in New York time (it has daylight-saving gaps); its chunks are run
    in this process, in whatever order a test picks."""
    engine = engine_for(postgres_url)
    ensure_schema(engine)
    tuned = replace(app_settings, database_url=postgres_url, timezone="America/New_York")
    return JobContext(settings=tuned, engine=engine)


def test_repeated_ids_through_a_worker_running_one_line_chunks_in_parallel(
    stack: Stack, worker: CeleryProcess
) -> None:
    tag = f"W{uuid.uuid4().hex[:8]}"
    (RUN_DATA_DIR / f"{tag}.csv").write_bytes(repeated_ids_file(tag))
    view = ledger.submit(
        stack.ctx, "import_csv", {"path": f"{tag}.csv", "chunk_rows": 1}, publish_chunks
    )
    done = ledger.wait(stack.ctx, view.id, timeout=RESULT_TIMEOUT)
    held, rejected = stored(stack.ctx, view.id)

    assert done.result == {"rows": 6, "imported": 3, "rejected": 3, "new": 3, "duplicates": 0}
    assert held == {f"{tag}-A": (2, "FIRST"), f"{tag}-B": (3, "B1"), f"{tag}-C": (6, "C")}
    assert sorted(rejected) == [4, 5, 7]


def test_two_chunks_taking_one_id_over_at_once_on_postgresql(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Line 7 holds K. Chunk 1 (line 5) has inserted and is about to read the holders when
    chunk 0 (line 2) takes K over and has not committed yet: chunk 1 must wait for that lock
    and then see line 2 as the holder, not read line 7 and take K over itself."""
    ctx = JobContext(
        settings=replace(app_settings, database_url=postgres_url), engine=engine_for(postgres_url)
    )
    ensure_schema(ctx.engine)
    row = "{0},2026-11-25T09:00:00+09:00,{1},SKU-1,1,1.00\n"
    ids_and_stores = [("K", "FIRST"), ("A1", "A"), ("A2", "A"), ("K", "SECOND"), ("A3", "A")]
    lines = [row.format(f"T-{order_id}", store) for order_id, store in ids_and_stores]
    (RUN_DATA_DIR / "takeover.csv").write_text(HEADER + "".join(lines) + row.format("T-K", "THIRD"))
    view = ledger.submit(
        ctx, "import_csv", {"path": "takeover.csv", "chunk_rows": 2}, lambda *_: None
    )
    ledger.run_chunk(ctx, view.id, 2)  # line 7 holds T-K

    second_inserted, second_go = threading.Event(), threading.Event()
    taken, first_go = threading.Event(), threading.Event()
    holders, take_over = import_rows._holders, import_rows._take_over

    def holders_after_a_pause(*args: Any) -> Any:
        if threading.current_thread().name == "second":
            second_inserted.set()
            second_go.wait(RESULT_TIMEOUT)
        return holders(*args)

    def take_over_then_hold(*args: Any) -> None:
        take_over(*args)
        taken.set()
        first_go.wait(RESULT_TIMEOUT)

    monkeypatch.setattr(import_rows, "_holders", holders_after_a_pause)
    monkeypatch.setattr(import_rows, "_take_over", take_over_then_hold)
    first = threading.Thread(target=ledger.run_chunk, args=(ctx, view.id, 0), name="first")
    second = threading.Thread(target=ledger.run_chunk, args=(ctx, view.id, 1), name="second")
    try:
        second.start()
        assert second_inserted.wait(RESULT_TIMEOUT)
        first.start()
        assert taken.wait(RESULT_TIMEOUT)
        second_go.set()
        assert wait_for_a_lock_wait(ctx)
        assert second.is_alive()
    finally:
        second_go.set()
        first_go.set()
        first.join(RESULT_TIMEOUT)
        second.join(RESULT_TIMEOUT)
    done = ledger.get(ctx, view.id)
    held, rejected = stored(ctx, view.id)

    assert done.result == {"rows": 6, "imported": 4, "rejected": 2, "new": 4, "duplicates": 0}
    assert held["T-K"] == (2, "FIRST")
    assert rejected == {
        line: "order_id 'T-K' repeats line 2 (a file may hold an order_id once)" for line in (5, 7)
    }


def wait_for_a_lock_wait(ctx: JobContext) -> bool:
    """Poll PostgreSQL until a session of this database waits for a lock."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    with ctx.engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            connection.rollback()
            if waiting:
                return True
            time.sleep(0.02)
    return False
