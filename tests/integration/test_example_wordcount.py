"""The wordcount example (examples/wordcount), installed with ``pip install -e`` and found through
its ``batchapp.jobs`` entry point alone (no ``BATCHAPP_JOBS``), on real workers and RabbitMQ:
its result is the count made here from the files, and a worker SIGKILLed mid-job changes it
not at all."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchapp import ledger
from tests.integration.conftest import RUN_DATA_DIR, Stack
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
    assert done.stderr.startswith("Error: acme.wordcount: ../.. is outside BATCHAPP_DATA_DIR")
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
