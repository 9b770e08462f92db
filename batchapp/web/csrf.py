"""Cross-site request forgery: every POST carries a token signed with the process's secret and
comes from this site (its Origin, else its Referer, names this host)."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

from starlette.requests import Request

FIELD = "csrf_token"
# A form left open longer than this is refused; reloading the page gives a new token.
MAX_AGE_S = 12 * 3600


class CsrfError(PermissionError):
    """A POST without a valid token, or from another site."""


def _signature(secret: bytes, user: str, issued: int) -> str:
    return hmac.new(secret, f"{user}\0{issued}".encode(), hashlib.sha256).hexdigest()


def make_token(secret: bytes, user: str, now: float | None = None) -> str:
    """A token for ``user``'s forms: when it was issued and its signature."""
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_signature(secret, user, issued)}"


def check_token(secret: bytes, user: str, token: str, now: float | None = None) -> None:
    issued_text, _, signature = token.partition(".")
    if not issued_text.isdigit():
        raise CsrfError("403: this form has no valid CSRF token; reload the page and try again")
    issued = int(issued_text)
    expected = _signature(secret, user, issued)
    age = (time.time() if now is None else now) - issued
    if not hmac.compare_digest(signature, expected) or not 0 <= age <= MAX_AGE_S:
        raise CsrfError("403: this form's CSRF token is wrong or expired; reload the page")


def check_origin(request: Request) -> None:
    """The POST must come from a page of this site: a browser sends Origin on a POST (or at
    least Referer); neither, or another site, is refused."""
    own = f"{request.url.scheme}://{request.url.netloc}"
    origin = request.headers.get("origin")
    if origin is None:
        referer = urlsplit(request.headers.get("referer", ""))
        origin = f"{referer.scheme}://{referer.netloc}" if referer.netloc else None
    if origin != own:
        raise CsrfError(f"403: a POST must come from this site's pages ({own}), not {origin}")


def user_of(request: Request) -> str:
    """The logged-in user ('' on a loopback bind without users)."""
    return str(getattr(request.state, "user", ""))
