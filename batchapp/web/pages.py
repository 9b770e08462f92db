"""The HTML pages: each reads what :mod:`batchapp.service` returns and renders a template.

Every action (retry, cancel, submit, pause, resume) is a GET that asks for confirmation and a
POST that does it, checked by :mod:`batchapp.web.csrf`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from batchapp import service
from batchapp.web import csrf
from batchapp.web.params import choice, int_value, job_id_of, text

JOBS_PER_PAGE = 25
MAX_PAGE = 100_000
# A job may have 10,000 chunks: the page lists the first ones and counts the rest.
CHUNKS_SHOWN = 500
REJECTS_PER_PAGE = 100
DEAD_LETTERS_SHOWN = 20
MAX_PARAMS_CHARS = 10_000
JOB_ACTIONS = {
    "retry": "Run again only the failed or unfinished chunks of this job.",
    "cancel": "Stop this job: chunks not yet run never run (retry runs them later).",
}
SCHEDULE_ACTIONS = {
    "pause": "Stop this stored entry from running until it is resumed.",
    "resume": "Run this stored entry again, one period from now.",
}
DONE_MESSAGES = {
    "retry": "Retry started.",
    "cancel": "Job cancelled.",
    "submit": "Job submitted.",
    "existing": "A job with this key already exists: here it is.",
    "pause": "Entry paused.",
    "resume": "Entry resumed.",
}


def local_time(iso: str | None) -> str:
    """An ISO time from the JSON objects, to the second, without its offset."""
    return "-" if not iso else iso[:19].replace("T", " ")


def render(request: Request, template: str, **context: Any) -> HTMLResponse:
    token = csrf.make_token(request.app.state.secret, csrf.user_of(request))
    did = request.query_params.get("did", "")
    html = request.app.state.templates.get_template(template).render(
        request=request,
        csrf_field=csrf.FIELD,
        csrf_token=token,
        tz=service.timezone().key,
        message=DONE_MESSAGES.get(did),
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html)


async def checked_form(request: Request) -> dict[str, str]:
    """The POST's form fields, once its origin and CSRF token are checked."""
    csrf.check_origin(request)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    csrf.check_token(request.app.state.secret, csrf.user_of(request), fields.get(csrf.FIELD, ""))
    return fields


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def home(request: Request) -> Response:
    return _redirect("/jobs")


def jobs_list(request: Request) -> HTMLResponse:
    query = request.query_params
    status = choice(query, "status", service.job_statuses())
    name = text(query, "job", 64)
    page = int_value(query, "page", 1, 1, MAX_PAGE)
    views = service.recent_jobs(
        JOBS_PER_PAGE + 1, offset=(page - 1) * JOBS_PER_PAGE, status=status, name=name
    )
    tz = service.timezone()
    filters = {k: v for k, v in (("status", status), ("job", name)) if v}
    return render(
        request,
        "jobs.html",
        jobs=[v.as_json(tz) for v in views[:JOBS_PER_PAGE]],
        statuses=service.job_statuses(),
        job_names=[t.name for t in service.job_types()],
        status=status,
        job=name,
        page=page,
        previous=urlencode(filters | {"page": page - 1}) if page > 1 else None,
        next=urlencode(filters | {"page": page + 1}) if len(views) > JOBS_PER_PAGE else None,
    )


def job_page(request: Request) -> HTMLResponse:
    job_id = job_id_of(request)
    rejects_page = int_value(request.query_params, "rejects_page", 1, 1, MAX_PAGE)
    report = service.job_report(job_id)
    chunks = service.job_chunks(job_id)
    rejects = service.job_rejects(
        job_id, REJECTS_PER_PAGE + 1, (rejects_page - 1) * REJECTS_PER_PAGE
    )
    data = report.as_json(service.timezone())
    return render(
        request,
        "job.html",
        job=data,
        chunks=chunks[:CHUNKS_SHOWN],
        chunks_not_shown=max(len(chunks) - CHUNKS_SHOWN, 0),
        errors=service.chunk_errors(job_id),
        rejects=rejects[:REJECTS_PER_PAGE],
        rejects_page=rejects_page,
        rejects_more=len(rejects) > REJECTS_PER_PAGE,
        can_retry=data["status"] in (service.FAILED, "cancelled"),
        can_cancel=data["status"] == "running",
    )


def job_action_confirm(request: Request) -> HTMLResponse:
    job_id, action = job_id_of(request), _action(request, JOB_ACTIONS)
    view = service.get_job(job_id)
    return render(
        request,
        "confirm.html",
        title=f"{action.capitalize()} job {view.id}",
        what=JOB_ACTIONS[action],
        details={"job": view.name, "status": view.status},
        action_url=f"/jobs/{quote(view.id)}/{action}",
        button=f"Yes, {action}",
        back=f"/jobs/{quote(view.id)}",
        fields={},
    )


async def job_action(request: Request) -> Response:
    await checked_form(request)
    job_id, action = job_id_of(request), _action(request, JOB_ACTIONS)
    if action == "retry":
        await run_in_threadpool(service.retry_job, job_id)
    else:
        await run_in_threadpool(service.cancel_job, job_id)
    return _redirect(f"/jobs/{quote(job_id)}?did={action}")


def submit_form(request: Request) -> HTMLResponse:
    return render(request, "submit.html", job_types=service.job_types())


async def submit(request: Request) -> Response:
    form = await checked_form(request)
    job = text(form, "job", 64)
    if job is None:
        raise HTTPException(400, "choose a job to submit")
    lines = form.get("params", "")
    if len(lines) > MAX_PARAMS_CHARS:
        raise HTTPException(400, f"parameters must be at most {MAX_PARAMS_CHARS} characters")
    params = service.parse_assignments(line for line in lines.splitlines() if line.strip())
    key = text(form, "key")
    await run_in_threadpool(service.check_submit, job, params)
    if form.get("confirmed") != "yes":
        return render(
            request,
            "confirm.html",
            title=f"Submit {job}",
            what="Submit this job with these parameters.",
            details={"job": job, **params, **({"key": key} if key else {})},
            action_url="/submit",
            button="Yes, submit",
            back="/submit",
            fields={"job": job, "params": lines, "key": key or "", "confirmed": "yes"},
        )
    view = await run_in_threadpool(lambda: service.submit_job(job, params, key=key))
    return _redirect(f"/jobs/{quote(view.id)}?did={'existing' if view.existing else 'submit'}")


def schedule(request: Request) -> HTMLResponse:
    tz = service.timezone()
    entries, leader = service.schedule()
    return render(request, "schedule.html", entries=[e.as_json(tz) for e in entries], leader=leader)


def schedule_confirm(request: Request) -> HTMLResponse:
    name, action = _entry_name(request), _action(request, SCHEDULE_ACTIONS)
    entries, _ = service.schedule()
    if not any(e.name == name and e.source == "stored" for e in entries):
        raise HTTPException(404, f"no stored schedule entry named {name!r}")
    return render(
        request,
        "confirm.html",
        title=f"{action.capitalize()} {name}",
        what=SCHEDULE_ACTIONS[action],
        details={"entry": name},
        action_url=f"/schedule/{quote(name)}/{action}",
        button=f"Yes, {action}",
        back="/schedule",
        fields={},
    )


async def schedule_action(request: Request) -> Response:
    await checked_form(request)
    name, action = _entry_name(request), _action(request, SCHEDULE_ACTIONS)
    change = service.schedule_pause if action == "pause" else service.schedule_resume
    await run_in_threadpool(change, name)
    return _redirect(f"/schedule?did={action}")


def dead_letters(request: Request) -> HTMLResponse:
    count, letters = service.dead_letters_peek(DEAD_LETTERS_SHOWN)
    reasons = {m.reason for m in letters} & service.DEAD_LETTER_REASONS.keys()
    return render(
        request,
        "dead_letters.html",
        count=count,
        letters=letters,
        queue=service.DEAD_LETTER_QUEUE,
        reasons={r: service.DEAD_LETTER_REASONS[r] for r in sorted(reasons)},
    )


def workers(request: Request) -> HTMLResponse:
    queues = service.queue_depths(service.settings.broker_timeout).values()
    return render(request, "workers.html", workers=service.workers(), queues=queues)


def _entry_name(request: Request) -> str:
    name = str(request.path_params["name"])
    if not (0 < len(name) <= 200 and name.isprintable()):
        raise HTTPException(404, "no such schedule entry")
    return name


def _action(request: Request, actions: dict[str, str]) -> str:
    action = str(request.path_params["action"])
    if action not in actions:
        raise HTTPException(404, f"no action {action[:40]!r}: expected {' or '.join(actions)}")
    return action
