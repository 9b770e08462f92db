"""The ``batchapp`` command: submit and follow batch jobs, show the schedule, run the demo.

    batchapp submit parallel_sum n=1000000 chunk_size=10000 --wait
    batchapp submit import_csv path=sales.csv --wait --json
    batchapp status ID | batchapp jobs | batchapp retry ID | batchapp cancel ID
    batchapp job-types [--json]
    batchapp schedule [--json] | batchapp dead-letters [--purge]
    batchapp schedule add NAME JOB KEY=VALUE... (--every SECONDS | --cron "M H DOM MON DOW")
    batchapp schedule pause NAME | resume NAME | remove NAME
    batchapp sample-csv sales.csv 100000 --bad 0.01
    batchapp demo

The Celery app is imported inside each command, so ``demo`` can point it at the embedded
broker first and a bad setting is reported as one line.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click

from batchapp.cli import display

F = TypeVar("F", bound=Callable[..., Any])
MAX_ERROR_CHARS = 1000
MAX_SAMPLE_ROWS = 1_000_000_000


class _UsageErrorLine(click.ClickException):
    """A usage mistake as one ``Error:`` line (click's own adds the usage text around it)."""

    exit_code = 2


def _usage_error_line(error: click.UsageError) -> click.ClickException:
    command = error.ctx.command_path if error.ctx is not None else "batchapp"
    return _UsageErrorLine(f"{error.format_message()} (see {command} --help)")


class _Command(click.Command):
    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            raise _usage_error_line(error) from None


class _Group(_Command, click.Group):
    command_class = _Command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as error:
            raise _usage_error_line(error) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """batchapp: chunked parallel jobs and periodic jobs on Celery."""
    # BATCHAPP_JOBS modules are found from the current folder, as `celery -A batchapp worker`
    # finds them, so CLI and workers started in one folder know the same jobs.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


@contextmanager
def _errors_as_one_line() -> Iterator[None]:
    """Bad input, and a database, broker or file that fails, end the command with one line and
    exit status 1 (bad settings end in batchapp.celery, with status 1 too)."""
    from amqp.exceptions import AMQPError
    from kombu.exceptions import OperationalError as KombuOperationalError
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    from batchapp import service

    try:
        yield
    except service.USER_ERRORS as exc:
        raise _error_line(str(exc)) from None
    except SQLAlchemyError as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        raise _error_line(f"cannot use the database at {_database_shown()}: {reason}") from None
    except (KombuOperationalError, AMQPError) as exc:
        raise _error_line(f"cannot reach the broker at {_broker_shown()}: {exc}") from None
    except OSError as exc:
        raise _os_error_line(exc) from None


def _error_line(message: str) -> click.ClickException:
    line = " ".join(message.split())
    if len(line) > MAX_ERROR_CHARS:
        line = f"{line[: MAX_ERROR_CHARS - 3]}..."
    return click.ClickException(line)


def _os_error_line(exc: OSError) -> click.ClickException:
    """Blame what the error names: the SQLite ledger's path, another file, else the broker."""
    from batchapp import service

    if exc.filename is None:
        # Sockets name no file; the only connection the CLI opens outside SQLAlchemy is AMQP.
        return _error_line(f"cannot reach the broker at {_broker_shown()}: {exc}")
    named = Path(exc.filename)
    ledger_file = service.sqlite_file(service.settings.database_url)
    if ledger_file is not None and ledger_file.is_relative_to(named):
        return _error_line(f"cannot use the database at {_database_shown()}: {exc}")
    return _error_line(f"cannot access {named}: {exc.strerror or exc}")


def _broker_shown() -> str:
    from batchapp import service

    return service.broker_shown()


def _database_shown() -> str:
    from batchapp import service

    return service.database_shown()


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # click's FloatRange lets 'nan' through (every comparison with it is false).
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"expected a finite number, got {value}")
    return value


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(function)


def _parse_assignments(assignments: tuple[str, ...]) -> dict[str, str]:
    from batchapp import service

    try:
        return service.parse_assignments(assignments)
    except service.ParamError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("job")
@click.argument("assignments", nargs=-1, metavar="KEY=VALUE...")
@click.option("--wait", is_flag=True, help="Wait for the job to finish, showing progress.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    callback=_finite,
    help="Seconds to wait.",
)
@click.option(
    "--key",
    help="Name this run (per JOB): while a job with KEY runs or has succeeded, "
    "submitting again returns it instead of starting another.",
)
@json_option
def submit(
    job: str,
    assignments: tuple[str, ...],
    wait: bool,
    timeout: float | None,
    key: str | None,
    as_json: bool,
) -> None:
    """Submit JOB with its parameters (`batchapp job-types` lists the jobs)."""
    params = _parse_assignments(assignments)
    with _errors_as_one_line():
        from batchapp import service

        view = service.submit_job(job, params, key=key)
        existing = view.existing
        if existing and not as_json:
            click.echo(f"job {view.id} already {view.status} with key {view.key}")
        if wait and not view.finished:
            wait_for = partial(service.wait_for_job, view, timeout)
            view = display.wait_with_progress(view, wait_for, show=not as_json)
    display.print_job(view, service.timezone(), as_json=as_json, extra={"existing": existing})
    if wait and view.status == service.FAILED:
        sys.exit(1)


@main.command()
@click.argument("job_id")
@json_option
def status(job_id: str, as_json: bool) -> None:
    """Show one job: progress, result or error, its runs, and its failed chunks."""
    with _errors_as_one_line():
        from batchapp import service

        report = service.job_report(job_id)
    tz = service.timezone()
    data = report.as_json(tz)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    display.print_job(report.job, tz)
    if report.executions:
        display.print_executions(report.executions, tz)
    if report.failed:
        display.print_failed_chunks(data)


@main.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def jobs(limit: int, as_json: bool) -> None:
    """Recent jobs, newest first. `batchapp job-types` lists the jobs you can submit."""
    with _errors_as_one_line():
        from batchapp import service

        views = service.recent_jobs(limit)
        tz = service.timezone()
    if as_json:
        click.echo(json.dumps([v.as_json(tz) for v in views], indent=2))
    else:
        display.print_jobs(views, tz)


@main.command("job-types")
@json_option
def job_types(as_json: bool) -> None:
    """Every job type you can submit: built-in, from BATCHAPP_JOBS, or from entry points."""
    with _errors_as_one_line():
        from batchapp import service

        types = service.job_types()
    if as_json:
        click.echo(json.dumps([t.as_json() for t in types], indent=2))
    else:
        display.table(
            ("NAME", "FROM", "PARAMETERS", "SUMMARY"),
            [(t.name, t.origin, t.params_help or "-", t.summary) for t in types],
        )


@main.command()
@click.argument("job_id")
@json_option
def retry(job_id: str, as_json: bool) -> None:
    """Run again only the failed or unfinished chunks of a job."""
    with _errors_as_one_line():
        from batchapp import service

        indexes = service.retry_job(job_id)
    if as_json:
        click.echo(json.dumps({"id": job_id, "republished": indexes}))
    else:
        click.echo(f"job {job_id}: republished {len(indexes)} chunk(s)")


@main.command()
@click.argument("job_id")
@json_option
def cancel(job_id: str, as_json: bool) -> None:
    """Stop a running job: chunks not yet run never run; `batchapp retry ID` runs them later."""
    with _errors_as_one_line():
        from batchapp import service

        view = service.cancel_job(job_id)
    display.print_job(view, service.timezone(), as_json=as_json)


@main.group(cls=_Group, invoke_without_command=True)
@json_option
@click.pass_context
def schedule(ctx: click.Context, as_json: bool) -> None:
    """The beat schedule, with each entry's source, state and next run time; add, pause,
    resume and remove the entries stored in the database (beat picks a change up within one
    BATCHAPP_BEAT_INTERVAL)."""
    if ctx.invoked_subcommand is not None:
        return
    with _errors_as_one_line():
        from batchapp import service

        tz = service.timezone()
        entries, leader = service.schedule()
    if as_json:
        click.echo(json.dumps([e.as_json(tz) for e in entries], indent=2))
    else:
        display.print_schedule(entries, tz)
        click.echo(f"sent by beat {leader}" if leader else "no beat holds the lease: none running")


@schedule.command("add")
@click.argument("name")
@click.argument("job")
@click.argument("assignments", nargs=-1, metavar="KEY=VALUE...")
@click.option("--every", "every_s", metavar="SECONDS", help="Run every SECONDS (at least 1).")
@click.option("--cron", "cron", metavar='"M H DOM MON DOW"', help="Run on a cron expression.")
@json_option
def schedule_add(
    name: str,
    job: str,
    assignments: tuple[str, ...],
    every_s: str | None,
    cron: str | None,
    as_json: bool,
) -> None:
    """Store entry NAME: run JOB with its parameters on a schedule, checked first.

    --every SECONDS counts from the last run; --cron runs in BATCHAPP_TIMEZONE."""
    if (every_s is None) == (cron is None):
        raise _UsageErrorLine("give one of --every SECONDS and --cron 'M H DOM MON DOW'")
    params = _parse_assignments(assignments)
    with _errors_as_one_line():
        from batchapp import service

        entry = service.schedule_add(name, job, params, every_s=every_s, cron_expression=cron)
    display.print_schedule_change(entry, "added", service.timezone(), as_json=as_json)


@schedule.command("pause")
@click.argument("name")
@json_option
def schedule_pause(name: str, as_json: bool) -> None:
    """Stop the stored entry NAME from running until it is resumed."""
    with _errors_as_one_line():
        from batchapp import service

        entry = service.schedule_pause(name)
    display.print_schedule_change(entry, "paused", service.timezone(), as_json=as_json)


@schedule.command("resume")
@click.argument("name")
@json_option
def schedule_resume(name: str, as_json: bool) -> None:
    """Run the stored entry NAME again, one period from now."""
    with _errors_as_one_line():
        from batchapp import service

        entry = service.schedule_resume(name)
    display.print_schedule_change(entry, "resumed", service.timezone(), as_json=as_json)


@schedule.command("remove")
@click.argument("name")
@json_option
def schedule_remove(name: str, as_json: bool) -> None:
    """Delete the stored entry NAME."""
    with _errors_as_one_line():
        from batchapp import service

        service.schedule_remove(name)
    click.echo(json.dumps({"name": name, "removed": True}) if as_json else f"removed {name}")


@main.command("dead-letters")
@click.option("--limit", type=click.IntRange(0, 1000), default=20, show_default=True)
@click.option("--purge", is_flag=True, help="Delete every dead letter.")
@json_option
def dead_letters(limit: int, purge: bool, as_json: bool) -> None:
    """Messages the workers refused (malformed, unknown task, too many retries), and why."""
    with _errors_as_one_line():
        from batchapp import service

        if purge:
            purged = service.dead_letters_purge()
        else:
            count, letters = service.dead_letters_peek(limit)
    if purge:
        click.echo(json.dumps({"purged": purged}) if as_json else f"purged {purged} dead letter(s)")
    elif as_json:
        click.echo(json.dumps({"count": count, "messages": [m.as_json() for m in letters]}))
    else:
        click.echo(f"{count} dead letter(s) in {service.DEAD_LETTER_QUEUE}")
        display.table(
            ("TASK", "ID", "FROM QUEUE", "REASON", "TIMES"),
            [(m.task[:40], m.id[:36], m.queue, m.reason, str(m.count)) for m in letters],
        )
        for reason in sorted({m.reason for m in letters} & service.DEAD_LETTER_REASONS.keys()):
            click.echo(f"{reason}: {service.DEAD_LETTER_REASONS[reason]}")


@main.command("sample-csv")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("rows", type=click.IntRange(0, MAX_SAMPLE_ROWS))
@click.option(
    "--bad",
    type=click.FloatRange(0, 1),
    callback=_finite,
    default=0.0,
    show_default=True,
    help="Share of rows that are bad (several kinds).",
)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite FILE even if it is not a sample CSV.")
def sample_csv(file: Path, rows: int, bad: float, seed: int, force: bool) -> None:
    """Write a sales CSV of ROWS realistic rows to FILE (relative to BATCHAPP_DATA_DIR).

    An existing FILE is overwritten only if sample-csv wrote it (or with --force), and
    batchapp's databases never are."""
    with _errors_as_one_line():
        from batchapp import service

        target, stats = service.write_sample_csv(file, rows, bad, seed, force=force)
    click.echo(f"wrote {target}: {stats.rows:,} rows, {stats.bad:,} bad")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
def web(host: str, port: int) -> None:
    """Serve the web UI: jobs, progress, retry, cancel, submit, schedule, dead letters,
    workers, and a JSON API. Beyond 127.0.0.1 it needs BATCHAPP_WEB_USERS (docs/web.md)."""
    try:
        from batchapp.web.app import BindRefused, serve
    except ImportError as exc:
        raise _error_line(
            f"batchapp web needs the web extra: pip install 'batchapp[web]' ({exc})"
        ) from None
    with _errors_as_one_line():
        try:
            serve(host, port)
        except BindRefused as exc:
            raise _error_line(str(exc)) from None


@main.command("web-password")
def web_password() -> None:
    """Print a hash of a password typed at the prompt, for BATCHAPP_WEB_USERS=name:hash."""
    from batchapp.web.passwords import MIN_PASSWORD_CHARS, hash_password

    password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_CHARS:
        raise _error_line(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    click.echo(hash_password(password))


@main.command()
@click.option("--keep", is_flag=True, help="Keep the demo's data folder.")
def demo(keep: bool) -> None:
    """Run worker and beat on an embedded broker, run the jobs, and stop everything."""
    from batchapp.cli.demo import run_demo

    sys.exit(run_demo(keep=keep))
