"""The ``batchapp`` command: submit and follow batch jobs, show the schedule, run the demo.

    batchapp submit parallel_sum n=1000000 chunk_size=10000 --wait
    batchapp submit import_csv path=sales.csv --wait --json
    batchapp status ID | batchapp jobs | batchapp retry ID | batchapp schedule
    batchapp sample-csv sales.csv 100000 --bad 0.01
    batchapp demo

The Celery app is imported inside each command, so ``demo`` can point it at the embedded
broker first and a bad setting is reported as one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click

from batchapp import display

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """batchapp: chunked parallel jobs and periodic jobs on Celery."""


@contextmanager
def _errors_as_one_line() -> Iterator[None]:
    """Bad input ends the command with one line and exit status 1 (bad settings end in
    batchapp.celery, with status 1 too)."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    from batchapp.jobs import ParamError
    from batchapp.ledger import JobStateError, UnknownJobError

    try:
        yield
    except (ParamError, UnknownJobError, JobStateError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, KombuOperationalError) as exc:
        # The broker (or database) is unreachable: say so, with the URL minus its password.
        from batchapp.celery import settings
        from batchapp.settings import mask_url

        raise click.ClickException(
            f"cannot reach the broker at {mask_url(settings.broker_url)}: {exc}"
        ) from None


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(function)


def _parse_assignments(assignments: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not key.isidentifier():
            raise click.ClickException(f"malformed parameter {item!r}: expected KEY=VALUE")
        if key in params:
            raise click.ClickException(f"parameter {key!r} given twice")
        params[key] = value
    return params


@main.command()
@click.argument("job")
@click.argument("assignments", nargs=-1, metavar="KEY=VALUE...")
@click.option("--wait", is_flag=True, help="Wait for the job to finish, showing progress.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds to wait.")
@json_option
def submit(
    job: str, assignments: tuple[str, ...], wait: bool, timeout: float | None, as_json: bool
) -> None:
    """Submit JOB with its parameters (see `batchapp jobs --help` for the job list)."""
    params = _parse_assignments(assignments)
    with _errors_as_one_line():
        from batchapp import ledger
        from batchapp.tasks import job_context, submit_job

        view = submit_job(job, params)
        if wait and not view.finished:
            view = display.wait_with_progress(job_context(), view, timeout, show=not as_json)
    display.print_job(view, job_context().tz, as_json=as_json)
    if wait and view.status == ledger.FAILED:
        sys.exit(1)


@main.command()
@click.argument("job_id")
@json_option
def status(job_id: str, as_json: bool) -> None:
    """Show one job: progress, result or error, and its failed chunks."""
    with _errors_as_one_line():
        from batchapp import ledger
        from batchapp.tasks import job_context

        view = ledger.get(job_context(), job_id)
        failed = [c for c in ledger.chunk_rows(job_context(), job_id) if c.status == "failed"]
    display.print_job(view, job_context().tz, as_json=as_json)
    if failed and not as_json:
        click.echo("failed chunks:")
        for chunk in failed[:20]:
            click.echo(f"  #{chunk.idx} (attempts {chunk.attempts}): {chunk.error}")


@main.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def jobs(limit: int, as_json: bool) -> None:
    """Recent jobs, newest first. Jobs you can submit: parallel_sum, import_csv, report, cleanup."""
    with _errors_as_one_line():
        from batchapp import ledger
        from batchapp.tasks import job_context

        views = ledger.recent(job_context(), limit)
        tz = job_context().tz
    if as_json:
        click.echo(json.dumps([display.job_json(v, tz) for v in views], indent=2))
    else:
        display.print_jobs(views, tz)


@main.command()
@click.argument("job_id")
@json_option
def retry(job_id: str, as_json: bool) -> None:
    """Run again only the failed or unfinished chunks of a job."""
    with _errors_as_one_line():
        from batchapp.tasks import retry_job

        indexes = retry_job(job_id)
    if as_json:
        click.echo(json.dumps({"id": job_id, "republished": indexes}))
    else:
        click.echo(f"job {job_id}: republished {len(indexes)} chunk(s)")


@main.command()
@json_option
def schedule(as_json: bool) -> None:
    """The beat schedule, with each entry's next run time."""
    with _errors_as_one_line():
        from batchapp.celery import app, settings

        tz = ZoneInfo(settings.timezone)
        entries = display.schedule_entries(app, tz)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    else:
        display.print_schedule(entries, tz)


@main.command("sample-csv")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("rows", type=click.IntRange(min=0))
@click.option(
    "--bad",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of rows that are bad (several kinds).",
)
@click.option("--seed", type=int, default=1, show_default=True)
def sample_csv(file: Path, rows: int, bad: float, seed: int) -> None:
    """Write a sales CSV of ROWS realistic rows to FILE (relative to BATCHAPP_DATA_DIR)."""
    from batchapp.sales_csv import write_sample

    with _errors_as_one_line():
        from batchapp.celery import settings

        target = file if file.is_absolute() else settings.data_dir / file
    stats = write_sample(target, rows, bad, seed)
    click.echo(f"wrote {target}: {stats.rows:,} rows, {stats.bad:,} bad")


@main.command()
@click.option("--keep", is_flag=True, help="Keep the demo's data folder.")
def demo(keep: bool) -> None:
    """Run worker and beat on an embedded broker, run the jobs, and stop everything."""
    from batchapp.demo import run_demo

    sys.exit(run_demo(keep=keep))
