"""How jobs and the schedule look on a terminal and in JSON (for the CLI and the demo)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click

if TYPE_CHECKING:
    # Types only: the CLI imports the app (and so the settings) inside each command.
    from batchapp.service import ExecutionView, JobView, ScheduleEntry

HIDDEN_PARAMS = frozenset({"columns", "size", "mtime_ns"})
"""Parameters the planner adds for itself: not worth a line in the summary."""


def local_time(value: datetime | None, tz: ZoneInfo) -> str:
    """A stored (naive UTC) time in ``tz``, to the second."""
    if value is None:
        return "-"
    return value.replace(tzinfo=UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def print_failed_chunks(report: dict[str, Any]) -> None:
    """The failed chunks of a job's JSON report (``JobReport.as_json``): the first ones listed."""
    click.echo("failed chunks:")
    for chunk in report["failed_chunks"]:
        click.echo(f"  #{chunk['index']} (attempts {chunk['attempts']}): {chunk['error']}")
    if report["failed_chunks_not_listed"]:
        click.echo(f"  ... and {report['failed_chunks_not_listed']:,} more, not listed")


def print_job(
    view: JobView, tz: ZoneInfo, *, as_json: bool = False, extra: dict[str, Any] | None = None
) -> None:
    """The job; ``extra`` adds keys to its JSON (the text leaves them to the caller)."""
    data = view.as_json(tz)
    if as_json:
        click.echo(json.dumps(data | (extra or {}), indent=2))
        return
    params = " ".join(f"{k}={v}" for k, v in view.params.items() if k not in HIDDEN_PARAMS)
    click.echo(f"job {view.id}  {view.name}  {view.status}")
    if view.key is not None:
        click.echo(f"  key      {view.key}")
    click.echo(f"  params   {params or '-'}")
    cancelled = f", {view.chunks_cancelled} cancelled" if view.chunks_cancelled else ""
    click.echo(
        f"  chunks   {view.chunks_done}/{view.chunks_total} done, {view.chunks_failed} failed"
        f"{cancelled}"
    )
    click.echo(f"  items    {view.items_done:,} done, {view.items_failed:,} failed")
    if view.result is not None:
        click.echo(f"  result   {json.dumps(view.result)}")
    if view.error:
        click.echo(f"  error    {view.error}")
    click.echo(f"  created  {local_time(view.created_at, tz)} {tz.key}")
    if data["elapsed_s"] is not None:
        click.echo(
            f"  finished {local_time(view.finished_at, tz)} {tz.key} ({data['elapsed_s']:.2f} s)"
        )


def print_executions(runs: Sequence[ExecutionView], tz: ZoneInfo) -> None:
    click.echo("executions:")
    for run in runs:
        ended = f" to {local_time(run.finished_at, tz)}" if run.finished_at else ""
        click.echo(
            f"  #{run.number} {run.started_by:<6} {run.outcome:<9} "
            f"{run.chunks_done} done, {run.chunks_failed} failed  "
            f"{local_time(run.started_at, tz)}{ended} {tz.key}"
        )


def print_jobs(views: Sequence[JobView], tz: ZoneInfo) -> None:
    rows = []
    for v in views:
        chunks = f"{v.chunks_done}/{v.chunks_total}"
        items = f"{v.items_done:,}"
        rows.append(
            (
                v.id,
                v.name,
                v.status,
                chunks + _chunk_note(v),
                items + (f" (+{v.items_failed:,} bad)" if v.items_failed else ""),
                local_time(v.created_at, tz),
            )
        )
    table(("ID", "JOB", "STATUS", "CHUNKS", "ITEMS", f"CREATED ({tz.key})"), rows)


def _chunk_note(view: JobView) -> str:
    notes = [
        f"{count} {what}"
        for count, what in ((view.chunks_failed, "failed"), (view.chunks_cancelled, "cancelled"))
        if count
    ]
    return f" ({', '.join(notes)})" if notes else ""


def print_schedule(entries: Sequence[ScheduleEntry], tz: ZoneInfo) -> None:
    rows = [e.as_json(tz) for e in entries]
    table(
        ("ENTRY", "SOURCE", "TASK", "ARGS", "SCHEDULE", "STATE", f"NEXT RUN ({tz.key})"),
        [
            (
                e["name"],
                e["source"],
                e["task"],
                _call_args(e["args"], e["kwargs"]),
                e["schedule"],
                "paused" if e["paused"] else "active",
                e["next_run"] or "-",
            )
            for e in rows
        ],
    )


def _call_args(args: list[Any], kwargs: dict[str, Any]) -> str:
    return json.dumps(args) + "".join(f" {key}={value}" for key, value in kwargs.items())


def print_schedule_change(
    entry: ScheduleEntry, what: str, tz: ZoneInfo, *, as_json: bool = False
) -> None:
    """One entry just added, paused or resumed."""
    data = entry.as_json(tz)
    if as_json:
        click.echo(json.dumps(data))
        return
    job = " ".join([str(entry.args[0]), *(f"{k}={v}" for k, v in entry.kwargs.items())])
    next_run = f", next run {data['next_run']} {tz.key}" if data["next_run"] else ""
    click.echo(f"{what} {entry.name}: {job}, {entry.schedule}{next_run}")


def wait_with_progress(
    view: JobView, wait: Callable[..., JobView], *, show: bool, lines: bool = False
) -> JobView:
    """``wait(on_progress=...)`` for the job, showing a progress bar on a terminal, else
    (``lines``) a line per 10%."""
    if lines and not sys.stderr.isatty():
        reported = -1

        def report(current: JobView) -> None:
            nonlocal reported
            finished = current.chunks_done + current.chunks_failed
            tenth = finished * 10 // max(current.chunks_total, 1)
            if tenth > reported:
                reported = tenth
                click.echo(
                    f"  {current.name}: {finished}/{current.chunks_total} chunks, "
                    f"{current.items_done:,} items"
                )

        return wait(on_progress=report)
    if not (show and sys.stderr.isatty()):
        return wait()
    with click.progressbar(
        length=view.chunks_total, label=view.name, file=sys.stderr, show_pos=True
    ) as bar:
        seen = 0

        def progress(current: JobView) -> None:
            nonlocal seen
            finished = current.chunks_done + current.chunks_failed
            bar.update(finished - seen)
            seen = finished

        return wait(on_progress=progress)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
