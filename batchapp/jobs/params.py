"""Declared parameter types for the short form: each checks one value and says what is wrong in
one line naming the job and the parameter.

Values arrive as text from the CLI (``n=5``) or as JSON values from Python callers; each type
accepts both and returns a JSON-ready value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchapp.jobs.base import JSON, ParamError, int_param
from batchapp.validate import shown

_MAX_FLOAT_TEXT = 64
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
# The largest int a declared Int accepts unless told otherwise (JSON and the ledger keep it).
INT_LIMIT = 10**18


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["n=5", "size=10"]`` (the CLI's and the web form's KEY=VALUE) as a dict of text."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not key.isidentifier():
            raise ParamError(f"malformed parameter {shown(item)}: expected KEY=VALUE")
        if key in params:
            raise ParamError(f"parameter {shown(key)} given twice")
        params[key] = value
    return params


class _Missing:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Missing()


class Param:
    """A declared parameter: ``check`` turns a raw value into a JSON one or raises ParamError."""

    default: Any = REQUIRED
    kind = "a value"

    def check(self, job: str, name: str, value: Any) -> JSON:
        raise NotImplementedError

    def parse(self, job: str, raw: Mapping[str, Any], name: str) -> JSON:
        value = raw.get(name)
        if value is None:
            if self.default is REQUIRED:
                raise ParamError(f"{job}: missing parameter {name} ({self.kind})")
            return self.default
        return self.check(job, name, value)

    def help(self, name: str) -> str:
        """``name=INT (0..100, default 10)`` for the job's params help."""
        text = f"{name}={self.placeholder()}"
        details = [d for d in (self.bounds(), self._default_text()) if d]
        return f"{text} ({', '.join(details)})" if details else text

    def placeholder(self) -> str:
        return "VALUE"

    def bounds(self) -> str:
        return ""

    def _default_text(self) -> str:
        return "" if self.default is REQUIRED else f"default {self.default!r}"


@dataclass(frozen=True)
class Int(Param):
    """An integer within ``min..max`` (decimal text from the CLI, ``1_000`` allowed)."""

    min: int = -INT_LIMIT
    max: int = INT_LIMIT
    default: int | None = REQUIRED
    kind = "an integer"

    def check(self, job: str, name: str, value: Any) -> JSON:
        return int_param(job, {name: value}, name, minimum=self.min, maximum=self.max)

    def placeholder(self) -> str:
        return "INT"

    def bounds(self) -> str:
        return f"{self.min:,}..{self.max:,}"


@dataclass(frozen=True)
class Float(Param):
    """A finite number within ``min..max`` (nan and inf are refused)."""

    min: float = -math.inf
    max: float = math.inf
    default: float | None = REQUIRED
    kind = "a number"

    def check(self, job: str, name: str, value: Any) -> JSON:
        number: float
        if isinstance(value, str):
            text = value.strip()
            try:
                if len(text) > _MAX_FLOAT_TEXT:
                    raise ValueError
                number = float(text)
            except ValueError:
                raise ParamError(f"{job}: {name} must be a number, got {shown(value)}") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(f"{job}: {name} must be a number, got {type(value).__name__}")
        else:
            number = float(value)
        if not math.isfinite(number):
            raise ParamError(f"{job}: {name} must be a finite number, got {shown(value)}")
        if not self.min <= number <= self.max:
            raise ParamError(
                f"{job}: {name} must be between {self.min:g} and {self.max:g}, got {number:g}"
            )
        return number

    def placeholder(self) -> str:
        return "NUMBER"

    def bounds(self) -> str:
        if math.isinf(self.min) and math.isinf(self.max):
            return ""
        return f"{self.min:g}..{self.max:g}"


@dataclass(frozen=True)
class Str(Param):
    """Text of ``min_len..max_len`` characters, stripped of surrounding blanks."""

    min_len: int = 1
    max_len: int = 1000
    default: str | None = REQUIRED
    kind = "a string"

    def check(self, job: str, name: str, value: Any) -> JSON:
        if not isinstance(value, str):
            raise ParamError(f"{job}: {name} must be a string, got {type(value).__name__}")
        text = value.strip()
        if not self.min_len <= len(text) <= self.max_len:
            raise ParamError(
                f"{job}: {name} must be {self.min_len:,} to {self.max_len:,} characters, "
                f"got {len(text):,}"
            )
        return text

    def placeholder(self) -> str:
        return "TEXT"

    def bounds(self) -> str:
        return f"{self.min_len}..{self.max_len} characters"


@dataclass(frozen=True)
class Bool(Param):
    """true/false, yes/no, on/off, 1/0 (any case) from the CLI, or a JSON boolean."""

    default: bool | None = REQUIRED
    kind = "true or false"

    def check(self, job: str, name: str, value: Any) -> JSON:
        if isinstance(value, bool):
            return value
        word = value.strip().lower() if isinstance(value, str) else None
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise ParamError(f"{job}: {name} must be true or false, got {shown(value)}")
        return word in TRUE_WORDS

    def placeholder(self) -> str:
        return "BOOL"


class Choice(Param):
    """One of the given strings: ``Choice("csv", "json", default="csv")``."""

    kind = "one of the choices"

    def __init__(self, *options: str, default: str | None = REQUIRED) -> None:
        if not options or not all(isinstance(o, str) for o in options):
            raise TypeError("Choice needs one or more strings")
        if default is not REQUIRED and default not in options:
            raise TypeError(f"Choice default {default!r} is not one of {options}")
        self.options = tuple(options)
        self.default = default
        self.kind = f"one of {', '.join(options)}"

    def check(self, job: str, name: str, value: Any) -> JSON:
        text = value.strip() if isinstance(value, str) else value
        if text not in self.options:
            raise ParamError(
                f"{job}: {name} must be one of {', '.join(self.options)}, got {shown(value)}"
            )
        return text

    def placeholder(self) -> str:
        return "|".join(self.options)

    def __repr__(self) -> str:
        return f"Choice({', '.join(map(repr, self.options))}, default={self.default!r})"
