"""The message guard on plain values: every malformed message is named, and it never raises.

tests/integration/test_availability.py throws these messages at a real worker.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import batchapp.tasks  # noqa: F401 - registers batchapp's tasks, which SERVED names
from batchapp.broker import guard
from batchapp.celery import app

SERVED = frozenset(name for name in app.tasks if name.startswith("batchapp."))
BUILT_IN_TASKS = (
    "celery.chord_unlock",
    "celery.chord",
    "celery.group",
    "celery.chain",
    "celery.map",
    "celery.starmap",
    "celery.chunks",
    "celery.accumulate",
    "celery.backend_cleanup",
)


def task_headers(task: str = "batchapp.tasks.calculate_sum", **changes: Any) -> dict[str, Any]:
    """Protocol 2 headers as Celery writes them."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": str(uuid.uuid4()),
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": None,
        "parent_id": None,
        "argsrepr": "(100,)",
        "kwargsrepr": "{}",
        "origin": "gen1@host",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    headers.update(changes)
    return headers


def task_body(args: Any = (100,), kwargs: Any = None, embed: Any = None) -> bytes:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None, **(embed or {})}
    return json.dumps([list(args), kwargs or {}, embed]).encode()


DEEP: list[Any] = [1]
for _ in range(40):
    DEEP = [DEEP]

# --- the guard on plain values ------------------------------------------------------------


def problem(headers: Any, body: bytes, content_type: Any = "application/json") -> str | None:
    return guard.problem(headers, content_type, "utf-8", body, SERVED)


def test_a_message_as_celery_writes_it_passes() -> None:
    assert problem(task_headers(), task_body()) is None
    beat_tick = task_headers(celery_beat_task=True, expires="2026-11-26T10:00:00+09:00")
    assert problem(beat_tick, task_body()) is None
    soon = (datetime.now(UTC) + timedelta(seconds=60)).isoformat()
    assert problem(task_headers(retries=3, eta=soon), task_body()) is None
    assert problem(task_headers(eta="", expires=""), task_body()) is None  # Celery reads: none
    redelivered = task_headers(**{"x-delivery-count": 2, "x-death": [{"count": 1}]})
    assert problem(redelivered, task_body()) is None


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({k: v for k, v in task_headers().items() if k != "id"}, task_body(), "no 'id' header"),
        ({"id": "x"}, task_body(), "no 'task' header"),
        (task_headers(), b'{"args": [100], "kwargs": {}}', "expected the list [args, kwargs"),
        (task_headers(), b"[[100], {}]", "expected the list [args, kwargs, embed]"),
        (task_headers(), b"[100, {}, {}]", "args are an int, expected a list"),
        (task_headers(), b"[[], [], {}]", "kwargs are a list, expected an object"),
        (task_headers(), b"[" * 40 + b"]" * 40, "nested more than 32 levels deep"),
        (task_headers(), b"[" * 200_000 + b"]" * 200_000, "over the limit of 262,144"),
        (task_headers(), b"\xff\xfe", "body is not UTF-8"),
        (task_headers(), b"[[1], {}, {", "body is not JSON"),
        (task_headers(), task_body(embed={"callbacks": [{"task": "x"}]}), "never linked"),
        (task_headers("celery.chord_unlock"), task_body(), "'celery.chord_unlock' is not served"),
        (task_headers("batchapp.tasks.nope"), task_body(), "is not served here"),
        (task_headers(retries=11), task_body(), "beyond the cap of 10 retries"),
        (task_headers(retries=-1), task_body(), "beyond the cap"),
        (task_headers(retries="3"), task_body(), "header 'retries' is a string, expected an int"),
        (task_headers(retries=True), task_body(), "header 'retries' is a bool"),
        (task_headers(eta="tomorrow"), task_body(), "header 'eta' is not an ISO 8601 time"),
        (task_headers(eta="2099-01-01T00:00:00+00:00"), task_body(), "more than 1 day, 0:00:00"),
        (task_headers(eta="9999-12-31T23:59:59"), task_body(), "more than 1 day, 0:00:00 ahead"),
        (task_headers(timelimit=[1, 2, 3]), task_body(), "header 'timelimit' must be"),
        (task_headers(timelimit=[-1, None]), task_body(), "header 'timelimit' must be"),
        (task_headers(id=""), task_body(), "header 'id' must be 1 to 255"),
        (task_headers(hostname="evil"), task_body(), "unknown header 'hostname'"),
        (task_headers(stamps={"a": DEEP}), task_body(), "header 'stamps': nested more than 32"),
        (task_headers(**{"x-death": DEEP}), task_body(), "header 'x-death': nested more than"),
        (["task", "id"], task_body(), "headers are list, not a table"),
    ],
)
def test_a_malformed_message_is_named_in_one_line(headers: Any, body: bytes, expected: str) -> None:
    reason = problem(headers, body)
    assert reason is not None and expected in reason
    assert "\n" not in reason


@pytest.mark.parametrize(
    "content_type", ["application/x-python-serialize", "text/plain", None, "application/yaml"]
)
def test_only_json_content_is_accepted(content_type: Any) -> None:
    reason = problem(task_headers(), task_body(), content_type)
    assert reason is not None and "content type" in reason


def test_every_batchapp_task_retries_less_than_the_cap() -> None:
    for name in SERVED:
        limit = app.tasks[name].max_retries
        assert limit is not None and limit <= guard.MAX_RETRIES, name


# --- generated malformed messages ---------------------------------------------------------

amqp_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def well_shaped(body: Any) -> bool:
    return (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and isinstance(body[1], dict)
        and isinstance(body[2], dict)
    )


@st.composite
def raw_bytes(draw: st.DrawFn) -> tuple[dict[str, Any] | None, bytes, str | None, str]:
    content_type = draw(
        st.sampled_from(
            [
                "application/x-python-serialize",
                "application/octet-stream",
                "text/plain",
                "application/x-yaml",
                "application/json; charset=binary",
                "APPLICATION/JSON",
            ]
        )
        | st.text(max_size=30).filter(lambda t: t != "application/json")
    )
    headers = draw(st.none() | st.just(task_headers()))
    return headers, draw(st.binary(max_size=600)), content_type, "binary"


@st.composite
def wrong_shapes(draw: st.DrawFn) -> tuple[dict[str, Any] | None, bytes, str | None, str]:
    body = draw(
        json_values.filter(lambda v: not well_shaped(v))
        | st.tuples(json_values, json_values, json_values)
        .map(list)
        .filter(lambda v: not well_shaped(v))
    )
    return task_headers(), json.dumps(body).encode(), "application/json", "utf-8"


@st.composite
def too_deep_or_big(draw: st.DrawFn) -> tuple[dict[str, Any] | None, bytes, str | None, str]:
    depth = draw(st.integers(guard.MAX_NESTING + 1, 20_000))
    nested = b"[" * depth + b"]" * depth
    body = draw(
        st.sampled_from(
            [
                nested,
                b"[" + nested + b", {}, {}]",
                b'[[], {"n": ' + nested + b"}, {}]",
                task_body(args=["x" * (guard.MAX_BODY_BYTES + 1)]),
                task_body(args=list(range(guard.MAX_ITEMS + 1))),
            ]
        )
    )
    return task_headers(), body, "application/json", "utf-8"


@st.composite
def broken_headers(draw: st.DrawFn) -> tuple[dict[str, Any] | None, bytes, str | None, str]:
    headers = task_headers(task=draw(st.sampled_from(sorted(SERVED))))
    breakage = draw(st.integers(0, 7))
    if breakage == 0:
        del headers[draw(st.sampled_from(["task", "id"]))]
    elif breakage == 1:
        name = draw(st.sampled_from(["task", "id", "retries", "timelimit", "ignore_result"]))
        headers[name] = draw(
            (amqp_scalars | st.lists(amqp_scalars, max_size=3)).filter(
                lambda v, name=name: problem({**headers, name: v}, task_body()) is not None
            )
        )
    elif breakage == 2:
        headers["task"] = draw(
            st.sampled_from(BUILT_IN_TASKS) | st.text(max_size=40).filter(lambda t: t not in SERVED)
        )
    elif breakage == 3:
        headers["retries"] = draw(
            st.integers(guard.MAX_RETRIES + 1, 2**62) | st.integers(-(2**62), -1)
        )
    elif breakage == 4:
        headers[draw(st.sampled_from(["eta", "expires"]))] = draw(
            st.text(min_size=1, max_size=30).filter(
                lambda t: problem({**headers, "eta": t}, task_body()) is not None
            )
        )
    elif breakage == 5:
        headers["timelimit"] = draw(
            st.lists(amqp_scalars, max_size=4).filter(
                lambda v: problem({**headers, "timelimit": v}, task_body()) is not None
            )
        )
    elif breakage == 6:
        name = draw(st.text(min_size=1, max_size=20))
        name = name if not name.startswith("x-") else "y" + name
        headers[name] = draw(amqp_scalars)
        if problem(headers, task_body()) is None:
            headers["hostname"] = "injected"
    else:
        headers["id"] = draw(st.just("") | st.text(min_size=256, max_size=300))
    body = task_body(embed=draw(st.just({}) | st.just({"chord": {"task": "celery.chord"}})))
    return headers, body, "application/json", "utf-8"


@settings(max_examples=500, deadline=None, database=None)
@given(
    headers=st.none()
    | st.dictionaries(st.text(max_size=12), amqp_scalars | st.binary(max_size=8), max_size=6)
    | st.builds(
        lambda changes: task_headers(**changes),
        st.dictionaries(st.sampled_from(sorted(guard._HEADER_TYPES)), amqp_scalars, max_size=3),
    ),
    content_type=st.none() | st.just("application/json") | st.text(max_size=20),
    body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_the_guard_never_raises(headers: Any, content_type: Any, body: bytes) -> None:
    reason = guard.problem(headers, content_type, "utf-8", body, SERVED)
    assert reason is None or (isinstance(reason, str) and "\n" not in reason)


malformed_messages = raw_bytes() | wrong_shapes() | too_deep_or_big() | broken_headers()
