"""The ledger tests of tests/unit/test_ledger.py and test_ledger_races.py that take a ``ctx``,
run on PostgreSQL.

They are collected here again with this module's ``ctx``: a fresh PostgreSQL database whose
timezone is Asia/Seoul, so nothing may rely on the server's timezone matching UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import event, text

from batchapp import ledger
from batchapp.jobs import JobContext
from batchapp.settings import load
from batchapp.storage.engines import engine_for
from batchapp.storage.tables import ensure_schema, metadata
from tests.integration.conftest import _psql
from tests.unit.test_ledger import (  # noqa: F401 - collected here, with ctx on PostgreSQL
    Published,
    test_a_cancel_waits_for_a_chunk_committing_and_keeps_its_output,
    test_a_cancelled_periodic_run_releases_its_lock,
    test_a_chunk_committing_when_its_job_is_cancelled_waits_and_is_dropped,
    test_a_chunk_delivered_twice_is_counted_once,
    test_a_chunk_of_a_job_the_ledger_does_not_have_is_named,
    test_a_chunk_that_was_running_when_its_job_was_cancelled_is_rolled_back,
    test_a_chunk_whose_worker_keeps_dying_fails_after_max_deliveries,
    test_a_failed_publish_after_every_chunk_finished_leaves_the_job_succeeded,
    test_a_failed_publish_fails_the_job_and_releases_its_periodic_lock,
    test_a_job_from_before_executions_gets_its_first_run_written_at_retry,
    test_a_job_with_no_chunks_succeeds_at_once,
    test_a_key_whose_job_failed_or_was_cancelled_starts_a_new_job,
    test_a_keyed_submit_returns_the_running_or_succeeded_job_with_its_key,
    test_a_periodic_run_that_waited_past_its_lock_steps_aside,
    test_a_periodic_runs_lock_counts_from_when_it_starts,
    test_a_retry_racing_a_submit_with_the_jobs_key_is_refused,
    test_a_skipped_periodic_run_is_one_execution_that_never_ran,
    test_bad_keys_are_refused,
    test_bad_parameters_are_refused_by_name,
    test_cancel_stops_what_has_not_run_and_retry_runs_it,
    test_chunks_queued_despite_a_failed_publish_leave_the_job_failed_until_retried,
    test_cleanup_removes_jobs_past_retention_and_expires_results,
    test_each_run_of_a_job_is_an_execution_with_its_own_chunks,
    test_exact_integers_past_64_bits_survive_the_ledger,
    test_exclusive_run_is_skipped_while_the_previous_one_is_going,
    test_import_counts_every_row_and_keeps_rejects_with_line_numbers,
    test_import_of_a_file_changed_after_submit_fails_the_chunk,
    test_import_plans_chunks_with_their_first_line_numbers,
    test_import_refuses_paths_outside_the_data_dir,
    test_lock_of_a_run_whose_worker_died_expires,
    test_only_a_running_job_can_be_cancelled,
    test_parallel_sum_reduces_to_the_sum_and_counts_every_item,
    test_reconciler_finishes_a_running_job_whose_chunks_all_finished,
    test_reconciler_republishes_the_unfinished_chunks_of_a_job_nothing_moves,
    test_report_totals_sales_per_seoul_day_and_store,
    test_retry_of_a_succeeded_job_is_refused,
    test_retry_republishes_only_failed_chunks_and_then_succeeds,
    test_retry_waits_for_a_failure_being_recorded_and_counts_it,
    test_rows_committed_while_the_report_runs_are_folded_by_the_next_run,
    test_the_brokers_delivery_count_fails_a_poison_chunk_at_once,
    test_the_first_report_after_an_upgrade_rebuilds_sales_daily_once,
    test_the_report_folds_in_new_rows_and_equals_a_full_recompute,
    test_two_deliveries_of_a_chunk_at_once_write_its_output_and_reduce_once,
    test_two_submits_with_one_key_at_once_create_one_job,
    test_unknown_job_id_is_named,
    test_wait_keeps_waiting_while_a_chunk_is_in_flight,
    test_wait_names_a_job_that_nothing_works_on,
    test_wait_on_sqlite_reads_the_job_only_after_a_commit,
    test_wait_reads_again_when_the_database_cuts_its_connection,
)
from tests.unit.test_ledger_races import (  # noqa: F401 - collected here, with ctx on PostgreSQL
    test_a_chunk_that_could_not_finish_its_job_after_committing_is_finished_by_its_retry,
    test_a_failure_and_the_last_success_committing_at_once_fail_the_job_once,
    test_a_redelivery_counted_while_its_first_delivery_commits_runs_once,
    test_the_last_chunk_committing_while_a_retry_commits_leaves_the_job_running,
    test_the_last_two_chunks_committing_at_once_reduce_exactly_once,
    test_the_reconciler_leaves_a_job_whose_chunks_are_committing,
)


@pytest.fixture(scope="module")
def seoul_postgres_url(postgres_url: str) -> Iterator[str]:
    database = postgres_url.rsplit("/", 1)[1]
    _psql(f"ALTER DATABASE \"{database}\" SET timezone TO 'Asia/Seoul'")
    engine = engine_for(postgres_url)
    ensure_schema(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SHOW timezone")).scalar_one() == "Asia/Seoul"
    yield postgres_url


@pytest.fixture(params=["postgresql"])
def ctx(seoul_postgres_url: str, tmp_path: Path) -> JobContext:
    settings = replace(load({"BATCHAPP_DATA_DIR": str(tmp_path)}), database_url=seoul_postgres_url)
    with engine_for(settings.database_url).begin() as connection:
        names = ", ".join(table.name for table in metadata.sorted_tables)
        connection.execute(text(f"TRUNCATE {names}"))
    return JobContext(settings=settings, engine=engine_for(settings.database_url))


def test_a_chunk_on_a_connection_the_server_closed_runs_its_transaction_again(
    seoul_postgres_url: str, tmp_path: Path
) -> None:
    # A pool process's engine: no ping at checkout (see batchapp/runtime.py).
    settings = replace(load({"BATCHAPP_DATA_DIR": str(tmp_path)}), database_url=seoul_postgres_url)
    engine = engine_for(seoul_postgres_url, pool_pre_ping=False, pool_size=1)
    ctx = JobContext(settings=settings, engine=engine)
    view = ledger.submit(ctx, "parallel_sum", {"n": 20, "chunk_size": 10}, Published())
    ledger.run_chunk(ctx, view.id, 0)
    with engine.connect() as connection:
        pooled = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    dropped: list[object] = []
    event.listen(engine.pool, "invalidate", lambda *args: dropped.append(args))
    # What a server restart or an idle-connection timeout does to the pooled connection.
    _psql(f"SELECT pg_terminate_backend({pooled})")

    assert "done: 10 items" in ledger.run_chunk(ctx, view.id, 1)
    assert len(dropped) == 1, "the pooled connection was not the dead one"
    assert ledger.get(ctx, view.id).result == 210
    engine.dispose()


def test_a_read_outside_a_transaction_leaves_the_next_transaction_atomic(
    seoul_postgres_url: str,
) -> None:
    from datetime import datetime

    from sqlalchemy import Connection, func, select

    from batchapp.storage.engines import in_transaction, read_row
    from batchapp.storage.tables import locks

    engine = engine_for(seoul_postgres_url, pool_pre_ping=False, pool_size=1)

    def write_then_fail(connection: Connection) -> None:
        connection.execute(
            locks.insert().values(name="atomic", job_id="j", expires_at=datetime(2030, 1, 1))
        )
        raise RuntimeError("after the write")

    with engine.connect() as connection:
        assert read_row(connection, select(func.count()).select_from(locks), {}) == (0,)
        with pytest.raises(RuntimeError, match="after the write"):
            in_transaction(connection, write_then_fail, write=True)
        assert read_row(connection, select(func.count()).select_from(locks), {}) == (0,)
    engine.dispose()
