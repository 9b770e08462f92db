"""The example project (examples/wordcount), installed with ``pip install -e`` and found through
its ``batchapp.jobs`` entry points alone (no ``BATCHAPP_JOBS``), on real workers, beat and
RabbitMQ: the word count equals the count made here from the files, and a worker SIGKILLed
mid-job changes it not at all; the declared stock import loads its table and rejects by line;
the stock value runs on the schedule the example declares; and the same jobs run on a
PostgreSQL ledger by configuration alone."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from batchapp import ledger
from batchapp.storage.tables import import_rejects
from tests.integration.conftest import RUN_DATA_DIR, Stack, _stack
from tests.support import run_cli, wait_until

FOLDER = "wordcount-texts"
WAIT = 60.0


@pytest.fixture(scope="module")
def texts(wordcount_example: Path) -> Counter[str]:
    """The example's sample texts in the run's data folder; their words counted here."""
    from acme_batch.samples import copy_samples
    from acme_batch.words import count_words

    counts: Counter[str] = Counter()
    for path in copy_samples(RUN_DATA_DIR / FOLDER):
        counts += count_words(path.read_text(encoding="utf-8"))
    return counts


@pytest.fixture(scope="module")
def env(stack: Stack, texts: Counter[str]) -> dict[str, str]:
    assert "BATCHAPP_JOBS" not in stack.env  # the entry point alone must bring the job
    return stack.env


def expected_result(counts: Counter[str], top: int) -> dict[str, Any]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    return {
        "words": counts.total(),
        "distinct": len(counts),
        "top": [[word, count] for word, count in ranked],
    }


def submit(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = run_cli("submit", "acme.wordcount", f"folder={FOLDER}", *args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_job_types_lists_the_job_from_its_entry_point(env: dict[str, str]) -> None:
    done = run_cli("job-types", "--json", env=env)
    listed = {t["name"]: t for t in json.loads(done.stdout)}

    assert done.returncode == 0, done.stderr
    assert listed["acme.wordcount"]["origin"] == "entry point wordcount (acme-batch)"
    assert listed["acme.wordcount"]["params"].startswith("folder=TEXT")


def test_the_job_counts_the_words_of_the_folder(
    stack: Stack, env: dict[str, str], texts: Counter[str]
) -> None:
    stack.worker()
    view = submit(env, "top=7", "chunk_bytes=300", "--wait", "--timeout", str(WAIT))

    assert view["status"] == "succeeded", view
    assert view["result"] == expected_result(texts, 7)
    assert view["items"] == {"done": texts.total(), "failed": 0}
    # Byte ranges, not only whole files: more chunks than the five files.
    assert view["chunks"]["total"] > 5


def test_a_folder_outside_the_data_folder_is_refused_in_one_line(env: dict[str, str]) -> None:
    done = run_cli("submit", "acme.wordcount", "folder=../..", env=env)

    assert done.returncode == 1
    assert done.stderr.startswith("Error: acme.wordcount: '../..' is outside BATCHAPP_DATA_DIR")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_worker_killed_mid_job_changes_nothing(stack: Stack, texts: Counter[str]) -> None:
    stack.stop_all()  # only the workers started here take chunks
    ctx = stack.ctx
    doomed = stack.worker("doomed")
    # About 25 chunks of 200 bytes, a fifth of a second each, two at a time: ~3 s of work.
    job_id = submit(stack.env, "top=20", "chunk_bytes=200", "pause=0.2")["id"]
    wait_until(lambda: ledger.get(ctx, job_id).chunks_done >= 3, "3 chunks done", WAIT)
    doomed.signal(signal.SIGKILL)
    doomed.popen.wait()
    at_kill = ledger.get(ctx, job_id)
    stack.worker("rescuer")
    done = ledger.wait(ctx, job_id, timeout=WAIT)
    rows = ledger.chunk_rows(ctx, job_id)
    attempts = sum(row.attempts for row in rows)
    redelivered = sum(1 for row in rows if row.redelivered)

    print(
        f"\nwordcount: worker SIGKILLed with {at_kill.chunks_done} of {done.chunks_total} "
        f"chunks done; {attempts} attempts; {done.items_done:,} words counted"
    )
    assert 3 <= at_kill.chunks_done < done.chunks_total
    assert done.status == "succeeded", done.error
    assert done.result == expected_result(texts, 20)
    # Each chunk counted once: the job's words are the sum of its chunks' words, each once.
    assert done.chunks_done == done.chunks_total
    assert done.items_done == texts.total()
    # A chunk is attempted again only when the broker redelivered it.
    assert done.chunks_total <= attempts <= done.chunks_total + redelivered


def test_the_declared_stock_import_loads_its_table_and_rejects_by_line(
    stack: Stack, env: dict[str, str]
) -> None:
    from acme_batch.samples import write_stock

    stack.worker("stock")
    write_stock(RUN_DATA_DIR / "stock.csv")
    done = run_cli("submit", "acme.stock", "path=stock.csv", "--wait", "--json", env=env)
    view = json.loads(done.stdout)
    with stack.ctx.engine.connect() as connection:
        stocked = dict(connection.execute(text("SELECT sku, value_cents FROM acme_stock")).all())
        rejects = dict(
            connection.execute(
                select(import_rejects.c.line, import_rejects.c.reason).where(
                    import_rejects.c.job_id == view["id"]
                )
            ).all()
        )

    assert done.returncode == 0, done.stderr
    assert (view["status"], view["result"]["imported"], view["result"]["rejected"]) == (
        "succeeded",
        4,
        3,
    )
    assert stocked == {"SKU-0001": 50_000, "SKU-0002": 299_997, "SKU-0003": 0, "SKU-0005": 4_200}
    assert sorted(rejects) == [5, 7, 8]
    assert rejects[5].startswith("units:")
    assert "line 2" in rejects[7]  # SKU-0001 again: the file's first line of it wins
    assert rejects[8].startswith("counted_at:")


def test_the_stock_value_runs_on_the_schedule_the_example_declares(stack: Stack) -> None:
    """The import above ran; beat, told to run the declared entry every 2 s, sends it and a
    worker values the active stock: SKU-0001, -0002 and -0005 (-0003 is not active)."""
    stack.worker("valuer")
    beat = stack.beat(ACME_STOCK_VALUE_EVERY="2", BATCHAPP_BEAT_INTERVAL="2")
    beat.wait_for_log("beat: sent acme.stock_value", timeout=30)

    def valued() -> ledger.JobView | None:
        runs = [v for v in ledger.recent(stack.ctx, 50) if v.name == "acme.stock_value"]
        return next((v for v in runs if v.status == "succeeded"), None)

    run = wait_until(valued, "a succeeded acme.stock_value run", WAIT)
    beat.stop()

    assert run.result == {"skus": 3, "units": 55, "value_cents": 50_000 + 299_997 + 4_200}


def test_the_projects_jobs_run_on_postgresql_by_configuration_alone(
    stack: Stack, postgres_url: str, texts: Counter[str]
) -> None:
    from acme_batch.samples import write_stock

    stack.stop_all()  # the SQLite workers would take this ledger's chunks and not find them
    write_stock(RUN_DATA_DIR / "stock.csv")
    for pg in _stack("example_pg", postgres_url):
        pg.worker("pg")
        counted = submit(pg.env, "top=7", "chunk_bytes=300", "--wait", "--timeout", str(WAIT))
        stocked = run_cli("submit", "acme.stock", "path=stock.csv", "--wait", "--json", env=pg.env)

    assert counted["status"] == "succeeded", counted
    assert counted["result"] == expected_result(texts, 7)
    assert stocked.returncode == 0, stocked.stderr
    assert json.loads(stocked.stdout)["result"]["imported"] == 4
