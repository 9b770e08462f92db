"""Bad messages, task arguments and files: each refused with a clear error, worker still up."""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.exceptions import NotRegistered
from kombu import Producer

from batchapp import ledger, queues, routing
from batchapp.celery import app
from batchapp.processes import CeleryProcess
from batchapp.sales_csv import COLUMNS, write_sample
from batchapp.tasks import calculate_sum, publish_chunks, run_chunk, run_periodic
from tests.conftest import RESULT_TIMEOUT, RUN_DATA_DIR, Stack

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
    assert "Received unregistered task of type 'batchapp.tasks.no_such_task'" in worker.log()
    assert still_serving()


def test_body_that_is_not_json_is_refused(worker: CeleryProcess) -> None:
    publish_raw(b"{this is not json", "application/json")

    worker.wait_for_log("Can't decode message body", timeout=RESULT_TIMEOUT)
    assert still_serving()


def test_pickle_message_is_never_deserialized(worker: CeleryProcess, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    publish_raw(pickle.dumps(((Touch(marker),), {}, {})), "application/x-python-serialize")

    worker.wait_for_log("Refusing to deserialize untrusted content of type pickle", RESULT_TIMEOUT)
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

    from batchapp.tables import sales_rejects

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
