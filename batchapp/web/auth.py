"""Who may use the web UI: a loopback bind without users, else HTTP Basic against
``BATCHAPP_WEB_USERS`` (scrypt hashes, compared in constant time)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

from anyio import to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from batchapp.web.passwords import verify_password

REALM = "batchapp"
# Answered without a login: says only whether the ledger answers (compose's healthcheck).
OPEN_PATHS = frozenset({"/healthz"})
# A hash to check unknown names against, so a wrong name costs what a wrong password does.
_NOBODY = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


class BindRefused(ValueError):
    """A bind beyond this machine without users to check."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, users: Mapping[str, str]) -> None:
    """:class:`BindRefused` for a bind other than loopback while no user is configured."""
    if not users and not is_loopback(host):
        raise BindRefused(
            f"refusing to serve on {host} without users: set BATCHAPP_WEB_USERS "
            "(see `batchapp web-password`) or bind 127.0.0.1"
        )


class BasicAuth:
    """ASGI middleware: every request needs a configured user's name and password.

    scrypt costs ~0.1 s, so a verified pair is remembered for the process (as an HMAC under the
    process's secret, never the password itself); checks run off the event loop."""

    def __init__(self, app: ASGIApp, users: Mapping[str, str], secret: bytes) -> None:
        self.app = app
        self.users = dict(users)
        self.secret = secret
        self.verified: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        user = await self._user(header)
        if user is None:
            await _refuse(send)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)

    async def _user(self, header: str) -> str | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        mark = hmac.new(self.secret, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        if mark in self.verified:
            return name
        hashed = self.users.get(name)
        ok = await to_thread.run_sync(verify_password, password, hashed or _NOBODY)
        if not (ok and hashed):
            return None
        self.verified.add(mark)
        return name


async def _refuse(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
            ],
        }
    )
    await send(
        {"type": "http.response.body", "body": b"401: log in with a BATCHAPP_WEB_USERS user\n"}
    )
