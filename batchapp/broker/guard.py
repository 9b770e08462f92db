"""Check a task message before the worker turns it into a task: anyone who can publish to the
broker can send any bytes, and Celery's own handling of a malformed message can end the worker.

:func:`problem` returns what is wrong with a message (one line) or ``None``; it knows nothing of
Celery's consumer, so every check is testable on plain values. The worker side is
:mod:`batchapp.broker.consumer`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.utils.time import maybe_iso8601

# Limits a batchapp message stays far below (a chunk message is about 300 bytes).
MAX_BODY_BYTES = 256 * 1024
MAX_NESTING = 32
MAX_ITEMS = 10_000
MAX_HEADER_CHARS = 64 * 1024
MAX_ID_CHARS = 255
# A redelivered or retried task beyond this many retries is a loop, whatever its max_retries.
MAX_RETRIES = 10
# A retry's countdown is at most a minute; a far-off ETA pins a message in the worker's memory.
MAX_ETA_AHEAD = timedelta(days=1)
# Celery's time limits are seconds; more than a week is a typo or an attack on the pool's timers.
MAX_TIME_LIMIT_S = 7 * 24 * 3600
CONTENT_TYPE = "application/json"
CONTENT_ENCODINGS = frozenset({"utf-8", "utf8"})

_STR = (str,)
_OPTIONAL_STR = (str, type(None))
# Protocol 2 headers and the types Celery's request reads them as; "task" and "id" are required.
_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "task": _STR,
    "id": _STR,
    "lang": _STR,
    "shadow": _OPTIONAL_STR,
    "eta": _OPTIONAL_STR,
    "expires": _OPTIONAL_STR,
    "group": _OPTIONAL_STR,
    "group_index": (int, type(None)),
    "retries": (int,),
    "timelimit": (list, tuple, type(None)),
    "root_id": _OPTIONAL_STR,
    "parent_id": _OPTIONAL_STR,
    "argsrepr": _OPTIONAL_STR,
    "kwargsrepr": _OPTIONAL_STR,
    "origin": _OPTIONAL_STR,
    "ignore_result": (bool, type(None)),
    "replaced_task_nesting": (int,),
    "stamped_headers": (list, tuple, type(None)),
    "stamps": (dict, type(None)),
    "celery_beat_task": (bool,),
}
_REQUIRED_HEADERS = ("task", "id")
_EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})


def problem(
    headers: Any,
    content_type: Any,
    content_encoding: Any,
    body: Any,
    served: Collection[str],
) -> str | None:
    """What makes this message unfit to run (one line), or None if it is a well-formed protocol-2
    JSON message for one of the ``served`` task names."""
    return _headers_problem(headers, served) or _body_problem(content_type, content_encoding, body)


def _headers_problem(headers: Any, served: Collection[str]) -> str | None:
    if not isinstance(headers, Mapping):
        return f"headers are {type(headers).__name__}, not a table"
    for name in _REQUIRED_HEADERS:
        if name not in headers:
            return f"no {name!r} header (only protocol 2 task messages are accepted)"
    for name, value in headers.items():
        if not isinstance(name, str):
            return f"header name {name!r} is not a string"
        # x- headers are the broker's own (x-death, x-delivery-count): any type, but bounded.
        kinds = _HEADER_TYPES.get(name, (object,) if name.startswith("x-") else None)
        if kinds is None:
            return f"unknown header {name[:64]!r}"
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"header {name!r} is {_kind(value)}, expected {_kinds(kinds)}"
        shape = _shape_problem(value, MAX_HEADER_CHARS)
        if shape:
            return f"header {name!r}: {shape}"
    task = headers["task"]
    if task not in served:
        return f"task {task[:100]!r} is not served here"
    if not 0 < len(headers["id"]) <= MAX_ID_CHARS:
        return f"header 'id' must be 1 to {MAX_ID_CHARS} characters"
    return _header_values_problem(headers)


def _header_values_problem(headers: Mapping[str, Any]) -> str | None:
    retries = headers.get("retries", 0)
    if not 0 <= retries <= MAX_RETRIES:
        return f"header 'retries' is {retries}, beyond the cap of {MAX_RETRIES} retries"
    for name in ("eta", "expires"):
        value = headers.get(name)
        if value is not None:
            try:
                when = maybe_iso8601(value)  # None for "", as Celery reads it
                ahead = when and (when if when.tzinfo else when.replace(tzinfo=UTC)) - datetime.now(
                    UTC
                )
            except (ValueError, OverflowError, TypeError):
                return f"header {name!r} is not an ISO 8601 time: {value[:64]!r}"
            if name == "eta" and ahead and ahead > MAX_ETA_AHEAD:
                # The worker would hold it, unacknowledged, in memory until then.
                return f"header 'eta' is {value[:64]}, more than {MAX_ETA_AHEAD} ahead"
    timelimit = headers.get("timelimit")
    if timelimit is not None and (
        len(timelimit) != 2 or not all(_is_time_limit(limit) for limit in timelimit)
    ):
        return (
            "header 'timelimit' must be [soft, hard], each null or 0 to "
            f"{MAX_TIME_LIMIT_S} s, got {str(timelimit)[:64]}"
        )
    for name in ("group_index", "replaced_task_nesting"):
        value = headers.get(name)
        if value is not None and not 0 <= value <= MAX_ITEMS:
            return f"header {name!r} is {value}, expected 0 to {MAX_ITEMS}"
    return None


def _is_time_limit(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and 0 <= value <= MAX_TIME_LIMIT_S


def _body_problem(content_type: Any, content_encoding: Any, body: Any) -> str | None:
    if content_type != CONTENT_TYPE:
        return f"content type {str(content_type)[:64]!r}, expected {CONTENT_TYPE!r}"
    if str(content_encoding).lower() not in CONTENT_ENCODINGS:
        return f"content encoding {str(content_encoding)[:64]!r}, expected 'utf-8'"
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if not isinstance(body, bytes | bytearray | memoryview):
        return f"body is {type(body).__name__}, not bytes"
    if len(body) > MAX_BODY_BYTES:
        return f"body is {len(body):,} bytes, over the limit of {MAX_BODY_BYTES:,}"
    try:
        decoded = json.loads(bytes(body).decode("utf-8"))
    except UnicodeDecodeError:
        return "body is not UTF-8"
    except RecursionError:
        return f"body is nested more than {MAX_NESTING} levels deep"
    except ValueError as exc:
        return f"body is not JSON ({str(exc)[:100]})"
    return _shape_problem(decoded, MAX_BODY_BYTES) or _task_body_problem(decoded)


def _task_body_problem(body: Any) -> str | None:
    if not isinstance(body, list) or len(body) != 3:
        return f"body is {_kind(body)}, expected the list [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list):
        return f"args are {_kind(args)}, expected a list"
    if not isinstance(kwargs, dict):
        return f"kwargs are {_kind(kwargs)}, expected an object"
    if not all(key.isidentifier() for key in kwargs):
        return "kwargs have a name that is not an identifier"
    if not isinstance(embed, dict):
        return f"embed is {_kind(embed)}, expected an object"
    unknown = set(embed) - _EMBED_KEYS
    if unknown:
        return f"embed has unknown keys {sorted(unknown)[:5]}"
    # batchapp never links tasks: a callback, chain or chord in a message is someone else's.
    linked = sorted(key for key, value in embed.items() if value)
    if linked:
        return f"embed carries {', '.join(linked)}; batchapp tasks are never linked"
    return None


def _shape_problem(value: Any, max_chars: int) -> str | None:
    """Nesting depth, item count and string sizes of a decoded JSON or header value."""
    if not isinstance(value, dict | list | tuple):
        # Most headers are one string or number: no walk (the guard runs on every message).
        return _long_string(value, max_chars)
    items = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"nested more than {MAX_NESTING} levels deep"
        items += 1
        if items > MAX_ITEMS:
            return f"more than {MAX_ITEMS:,} items"
        too_long = _long_string(current, max_chars)
        if too_long:
            return too_long
        if isinstance(current, dict):
            stack.extend((key, depth + 1) for key in current)
            stack.extend((item, depth + 1) for item in current.values())
        elif isinstance(current, list | tuple):
            stack.extend((item, depth + 1) for item in current)
    return None


def _long_string(value: Any, max_chars: int) -> str | None:
    if isinstance(value, str | bytes) and len(value) > max_chars:
        return f"a string of {len(value):,} characters, over the limit of {max_chars:,}"
    return None


_TYPE_NAMES: dict[type, str] = {
    dict: "an object",
    list: "a list",
    tuple: "a list",
    str: "a string",
    int: "an int",
    bool: "a bool",
    float: "a float",
    type(None): "null",
}


def _kind(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _kinds(kinds: tuple[type, ...]) -> str:
    return " or ".join(dict.fromkeys(_TYPE_NAMES.get(kind, kind.__name__) for kind in kinds))
