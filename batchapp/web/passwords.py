"""Password hashes for ``BATCHAPP_WEB_USERS``: stdlib scrypt, ``scrypt$N$r$p$salt$hash``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# OWASP's scrypt minimum (N=2^17, r=8, p=1) costs 128 MiB and ~0.3 s here; 2^15 is 32 MiB and
# ~0.08 s. A verified password is remembered per process (auth.py), so the cost is paid once.
N, R, P = 2**15, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_N = 2**20
MIN_PASSWORD_CHARS = 8


class PasswordHashError(ValueError):
    """A stored hash that is not one :func:`hash_password` makes."""


def hash_password(password: str, *, n: int = N, salt: bytes | None = None) -> str:
    """A new hash of ``password`` with a random salt."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    key = _scrypt(password, salt, n, R, P)
    return "$".join(["scrypt", str(n), str(R), str(P), _b64(salt), _b64(key)])


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` is the one ``hashed`` was made from (compared in constant time)."""
    try:
        kind, n, r, p, salt, key = hashed.split("$")
        if kind != "scrypt" or not 2 <= int(n) <= MAX_N:
            raise ValueError
        expected = base64.b64decode(key, validate=True)
        actual = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except ValueError:
        raise PasswordHashError("not a hash `batchapp web-password` prints") from None
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 2**20, dklen=KEY_BYTES
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
