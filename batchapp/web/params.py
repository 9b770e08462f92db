"""Query and form values checked at the edge: a bad one is a 400 naming it, in one line."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request

from batchapp.validate import shown

MAX_TEXT_CHARS = 200


class BadParameter(ValueError):
    """A query or form value the page cannot use."""


def int_value(values: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = values.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadParameter(f"{name} must be a whole number from {low} to {high}, got {shown(raw)}")
    return int(raw)


def choice(values: Mapping[str, str], name: str, allowed: Iterable[str]) -> str | None:
    """One of ``allowed``, or None when the value is empty or absent."""
    raw = values.get(name, "").strip()
    if not raw:
        return None
    options = list(allowed)
    if raw not in options:
        raise BadParameter(f"{name} must be one of {', '.join(options)}, got {shown(raw)}")
    return raw


def text(values: Mapping[str, str], name: str, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Text without control characters, or None when empty or absent."""
    raw = values.get(name, "").strip()
    if not raw:
        return None
    if len(raw) > max_chars or not raw.isprintable():
        raise BadParameter(f"{name} must be printable text of at most {max_chars} characters")
    return raw


def job_id_of(request: Request) -> str:
    """The job id in the path; one that no job can have is a 404 at once."""
    job_id = str(request.path_params["job_id"])
    if not (0 < len(job_id) <= 64 and job_id.isalnum() and job_id.isascii()):
        raise HTTPException(404, f"no job with id {shown(job_id)}")
    return job_id
