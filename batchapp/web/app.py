"""The Starlette app behind ``batchapp web``: routes, guards, and errors as one line.

Handlers are plain ``def`` (Starlette runs them in its threadpool, where the sync SQLAlchemy
ledger belongs) except the POSTs, which read their form on the event loop first.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from amqp.exceptions import AMQPError
from jinja2 import Environment, FileSystemLoader, select_autoescape
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from batchapp import service
from batchapp.web import api, pages
from batchapp.web.auth import BasicAuth, BindRefused, check_bind
from batchapp.web.csrf import CsrfError
from batchapp.web.params import BadParameter

__all__ = ["BindRefused", "create_app", "serve"]

HERE = Path(__file__).parent
MAX_ERROR_CHARS = 500
# Scripts and styles only from this site, no framing, forms only to this site: a job
# parameter that slipped past escaping still could not run.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def templates() -> Environment:
    """Jinja2 with autoescape on every template: job parameters, errors and rejects are user
    data."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["local_time"] = pages.local_time
    return env


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(users: Mapping[str, str], secret: bytes | None = None) -> Starlette:
    """The app; with ``users``, every request needs one of them (HTTP Basic)."""
    secret = secret or secrets.token_bytes(32)
    middleware = [Middleware(SecurityHeaders)]
    if users:
        middleware.append(Middleware(BasicAuth, users=users, secret=secret))
    routes = [
        Route("/", pages.home),
        Route("/jobs", pages.jobs_list),
        Route("/jobs/{job_id}", pages.job_page),
        Route("/jobs/{job_id}/{action:str}", pages.job_action_confirm, methods=["GET"]),
        Route("/jobs/{job_id}/{action:str}", pages.job_action, methods=["POST"]),
        Route("/submit", pages.submit_form, methods=["GET"]),
        Route("/submit", pages.submit, methods=["POST"]),
        Route("/schedule", pages.schedule),
        Route("/schedule/{name}/{action:str}", pages.schedule_confirm, methods=["GET"]),
        Route("/schedule/{name}/{action:str}", pages.schedule_action, methods=["POST"]),
        Route("/dead-letters", pages.dead_letters),
        Route("/workers", pages.workers),
        Route("/api/jobs", api.jobs),
        Route("/api/jobs/{job_id}", api.job),
        Route("/api/job-types", api.job_types),
        Route("/api/schedule", api.schedule),
        Route("/api/dead-letters", api.dead_letters),
        Route("/api/workers", api.workers),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handlers: dict[Any, Any] = {error: _error(400) for error in service.USER_ERRORS}
    handlers |= {
        HTTPException: _http_error,
        BadParameter: _error(400),
        CsrfError: _error(403),
        service.UnknownJobError: _error(404),
        service.JobStateError: _error(409),
        SQLAlchemyError: _database_error,
        KombuOperationalError: _broker_error,
        AMQPError: _broker_error,
        OSError: _error(503),
        Exception: _internal_error,
    }
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.secret = secret
    app.state.templates = templates()
    return app


def metrics(request: Request) -> Response:
    from batchapp.web.metrics import render_metrics

    body, content_type = render_metrics(service.job_context())
    return Response(body, media_type=content_type)


def healthz(request: Request) -> Response:
    """200 "ok" when the ledger answers a query; its error (a 503) otherwise."""
    service.ledger_ping()
    return Response("ok\n", media_type="text/plain")


def error_response(request: Request, status: int, message: str) -> Response:
    """One line: JSON ``{"error": ...}`` under /api/, else a small page (escaped)."""
    line = " ".join(str(message).split())[:MAX_ERROR_CHARS] or "error"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": line}, status_code=status)
    if request.url.path in ("/metrics", "/healthz"):
        return Response(line + "\n", status_code=status, media_type="text/plain")
    html = request.app.state.templates.get_template("error.html").render(
        status=status, message=line
    )
    return HTMLResponse(html, status_code=status)


def _error(status: int) -> Any:
    async def handler(request: Request, exc: Exception) -> Response:
        return error_response(request, status, str(exc))

    return handler


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(request, exc.status_code, f"{exc.status_code}: {exc.detail}")


async def _database_error(request: Request, exc: Exception) -> Response:
    reason = exc.orig if isinstance(exc, DBAPIError) else exc
    return error_response(
        request, 503, f"cannot use the database at {service.database_shown()}: {reason}"
    )


async def _broker_error(request: Request, exc: Exception) -> Response:
    return error_response(
        request, 503, f"cannot reach the broker at {service.broker_shown()}: {exc}"
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the server's log (uvicorn's), never to the page.
    return error_response(request, 500, f"internal error ({type(exc).__name__}); see the log")


def serve(host: str, port: int) -> None:
    """Serve the UI on ``host``:``port`` until interrupted; :class:`BindRefused` first for a
    bind beyond loopback without ``BATCHAPP_WEB_USERS``."""
    import uvicorn

    users = dict(service.settings.web_users)
    check_bind(host, users)
    app = create_app(users, service.settings.web_secret.encode() or None)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
