"""Bad messages, task arguments and files: each refused with a clear error, worker still up."""

from __future__ import annotations

import os
import pickle
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import NotRegistered
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Producer
from sqlalchemy import delete, select, text

from batchapp import ledger
from batchapp.broker import queues, routing
from batchapp.celery import app
from batchapp.celery import settings as app_settings
from batchapp.cli.processes import CeleryProcess
from batchapp.jobs import JobContext, import_csv
from batchapp.jobs.sales_csv import COLUMNS, RowParser, write_sample
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema, sales, sales_rejects
from batchapp.tasks import calculate_sum, publish_chunks, run_chunk, run_periodic
from tests.conftest import RESULT_TIMEOUT, RUN_DATA_DIR, Stack
from tests.hostile import sales_line

HEADER = ",".join(COLUMNS) + "\n"
GOOD = "S9-{0},2026-11-25T09:00:00+09:00,SEOUL-01,SKU-1,1,1.00\n"


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[CeleryProcess]:
    yield stack.worker()


def still_serving() -> bool:
    return bool(calculate_sum.delay(3).get(timeout=RESULT_TIMEOUT) == 6)


def publish_raw(body: bytes, content_type: str, task: str = "batchapp.tasks.calculate_sum") -> str:
    task_id = str(uuid.uuid4())
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
    from sqlalchemy import select

    from batchapp.storage.tables import sales_rejects

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


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def chunk_ctx(request: pytest.FixtureRequest) -> JobContext:
    """A ledger on SQLite or on PostgreSQL, in New York time (it has daylight-saving gaps);
    its chunks are run in this process, in whatever order a test picks."""
    if request.param == "sqlite":
        url = f"sqlite:///{RUN_DATA_DIR / 'bad-input-chunks.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = engine_for(url)
    ensure_schema(engine)
    tuned = replace(app_settings, database_url=url, timezone="America/New_York")
    return JobContext(settings=tuned, engine=engine)


def run_in_order(
    ctx: JobContext, name: str, content: bytes, order: Sequence[int]
) -> ledger.JobView:
    """Import ``content`` with chunks of 2 lines, run here in ``order`` (then any left)."""
    (RUN_DATA_DIR / name).write_bytes(content)
    view = ledger.submit(ctx, "import_csv", {"path": name, "chunk_rows": 2}, lambda *_: None)
    indexes = [i for i in order if i < view.chunks_total]
    for index in [*indexes, *(i for i in range(view.chunks_total) if i not in indexes)]:
        ledger.run_chunk(ctx, view.id, index)
    return ledger.get(ctx, view.id)


def stored(ctx: JobContext, job_id: str) -> tuple[dict[str, tuple[int, str]], dict[int, str]]:
    """This job's sales rows (order_id -> line, store) and rejects (line -> reason)."""
    with ctx.engine.connect() as connection:
        rows = connection.execute(
            select(sales.c.order_id, sales.c.line, sales.c.store).where(sales.c.job_id == job_id)
        )
        held = {order_id: (line, store) for order_id, line, store in rows}
        rejected = connection.execute(
            select(sales_rejects.c.line, sales_rejects.c.reason).where(
                sales_rejects.c.job_id == job_id
            )
        )
        return held, {line: reason for line, reason in rejected}


def repeated_ids_file(tag: str) -> bytes:
    """{tag}-A on lines 2, 5 and 7 with three contents; {tag}-B twice on line 3's chunk."""
    row = "{0},2026-11-25T09:00:00+09:00,{1},SKU-1,1,1.00\n"
    lines = [
        row.format(f"{tag}-A", "FIRST"),
        row.format(f"{tag}-B", "B1"),
        row.format(f"{tag}-B", "B2"),
        row.format(f"{tag}-A", "SECOND"),
        row.format(f"{tag}-C", "C"),
        row.format(f"{tag}-A", "FIRST"),
    ]
    return (HEADER + "".join(lines)).encode()


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)])
def test_an_order_id_repeated_in_a_file_keeps_its_first_line_whatever_the_chunk_order(
    chunk_ctx: JobContext, order: tuple[int, ...]
) -> None:
    tag = f"R{uuid.uuid4().hex[:8]}"
    view = run_in_order(chunk_ctx, f"{tag}.csv", repeated_ids_file(tag), order)
    held, rejected = stored(chunk_ctx, view.id)

    assert view.status == "succeeded"
    assert view.result == {"rows": 6, "imported": 3, "rejected": 3, "new": 3, "duplicates": 0}
    assert (view.items_done, view.items_failed) == (3, 3)
    assert held == {f"{tag}-A": (2, "FIRST"), f"{tag}-B": (3, "B1"), f"{tag}-C": (6, "C")}
    assert rejected == {
        4: f"order_id '{tag}-B' repeats line 3 (a file may hold an order_id once)",
        5: f"order_id '{tag}-A' repeats line 2 (a file may hold an order_id once)",
        7: f"order_id '{tag}-A' repeats line 2 (a file may hold an order_id once)",
    }


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


def test_ids_imported_by_an_earlier_job_stay_duplicates(chunk_ctx: JobContext) -> None:
    tag = f"D{uuid.uuid4().hex[:8]}"
    first = run_in_order(chunk_ctx, f"{tag}-1.csv", repeated_ids_file(tag), (0, 1, 2))
    again = run_in_order(chunk_ctx, f"{tag}-2.csv", repeated_ids_file(tag), (2, 1, 0))

    assert first.result["new"] == 3
    assert again.result == {"rows": 6, "imported": 6, "rejected": 0, "new": 0, "duplicates": 6}


def expected_import(content: bytes, ctx: JobContext) -> tuple[int, dict[str, int]]:
    """(data lines, order_id -> first valid line), read line by line as the job should."""
    parse = RowParser(COLUMNS, ctx.tz, to_db_time=lambda v: v, to_db_date=lambda v: v)
    body = content.split(b"\n", 1)[1]
    lines = body.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    first: dict[str, int] = {}
    for number, raw in enumerate(lines, start=2):
        try:
            row = parse(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            continue
        if not isinstance(row, str):
            first.setdefault(row[0], number)
    return len(lines), first


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lines=st.lists(sales_line(), max_size=9),
    last_newline=st.booleans(),
    order=st.permutations(range(5)),
)
def test_imported_plus_rejected_is_every_line_whatever_the_bytes(
    chunk_ctx: JobContext, lines: list[bytes], last_newline: bool, order: list[int]
) -> None:
    content = HEADER.encode() + b"\n".join(lines) + (b"\n" if last_newline else b"")
    with chunk_ctx.engine.begin() as connection:
        connection.execute(delete(sales))  # so every valid line's id is new to the table
    view = run_in_order(chunk_ctx, "hostile.csv", content, order)
    assert view.status == "succeeded", view.error

    held, rejected = stored(chunk_ctx, view.id)
    line_count, first_lines = expected_import(content, chunk_ctx)
    assert view.result["imported"] + view.result["rejected"] == view.result["rows"] == line_count
    assert view.items_done + view.items_failed == line_count
    assert view.result["imported"] == view.result["new"] == len(held) == len(first_lines)
    assert {order_id: line for order_id, (line, _) in held.items()} == first_lines
    assert len(rejected) == view.result["rejected"]
    with chunk_ctx.engine.connect() as connection:
        texts = connection.execute(
            select(sales_rejects.c.raw, sales_rejects.c.reason).where(
                sales_rejects.c.job_id == view.id
            )
        )
        assert not any("\0" in raw + reason for raw, reason in texts)


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
    holders, take_over = import_csv._holders, import_csv._take_over

    def holders_after_a_pause(*args: Any) -> Any:
        if threading.current_thread().name == "second":
            second_inserted.set()
            second_go.wait(RESULT_TIMEOUT)
        return holders(*args)

    def take_over_then_hold(*args: Any) -> None:
        take_over(*args)
        taken.set()
        first_go.wait(RESULT_TIMEOUT)

    monkeypatch.setattr(import_csv, "_holders", holders_after_a_pause)
    monkeypatch.setattr(import_csv, "_take_over", take_over_then_hold)
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
