"""The JSON API: the same objects as the CLI's ``--json`` (the views' own ``as_json``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from batchapp import service
from batchapp.web.params import choice, int_value, job_id_of, text

MAX_LIMIT = 1000


def jobs(request: Request) -> JSONResponse:
    """``batchapp jobs --json``, filtered by ``status`` and ``job``, from ``offset``."""
    query = request.query_params
    views = service.recent_jobs(
        int_value(query, "limit", 20, 1, MAX_LIMIT),
        offset=int_value(query, "offset", 0, 0, 10**9),
        status=choice(query, "status", service.job_statuses()),
        name=text(query, "job", 64),
    )
    tz = service.timezone()
    return JSONResponse([v.as_json(tz) for v in views])


def job(request: Request) -> JSONResponse:
    """``batchapp status ID --json``."""
    return JSONResponse(service.job_report(job_id_of(request)).as_json(service.timezone()))


def job_types(request: Request) -> JSONResponse:
    """``batchapp job-types --json``."""
    return JSONResponse([t.as_json() for t in service.job_types()])


def schedule(request: Request) -> JSONResponse:
    """``batchapp schedule --json``."""
    tz = service.timezone()
    return JSONResponse([e.as_json(tz) for e in service.schedule()[0]])


def dead_letters(request: Request) -> JSONResponse:
    """``batchapp dead-letters --json``."""
    count, letters = service.dead_letters_peek(
        int_value(request.query_params, "limit", 20, 0, 1000)
    )
    return JSONResponse({"count": count, "messages": [m.as_json() for m in letters]})


def workers(request: Request) -> JSONResponse:
    """The workers that answer ``inspect``, and each task queue's depth."""
    return JSONResponse(
        {
            "workers": [w.as_json() for w in service.workers()],
            "queues": [
                q.as_json() for q in service.queue_depths(service.settings.broker_timeout).values()
            ],
        }
    )
