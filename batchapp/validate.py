"""Argument checks whose errors name the argument, what it must be, and what was given."""

from __future__ import annotations

from typing import Any


def shown(value: Any, keep: int = 60) -> str:
    """A repr of ``value`` cut to about ``keep`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= keep else f"{text[: keep - 3]}... ({len(text):,} characters)"


def describe(value: Any) -> str:
    """``str '100'``: the type and a short repr, for error messages."""
    return f"{type(value).__name__} {shown(value)}"


def require_int(
    where: str,
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """``value`` as an int in [minimum, maximum]; bool is refused, it is not a count."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int, got {describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{where}: {name} must be <= {maximum:,}, got {value:,}")
    return value


def require_str(where: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: {name} must be a str, got {describe(value)}")
    return value
