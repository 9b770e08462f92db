"""The peers benchmark's bookkeeping, without running a system: wrong results and missed
targets fail the run, a turn that lost its broker runs once more, and CPU time is counted.

tests/integration/test_peers.py runs every system at quick sizes.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SYSTEMS = (
    "batchapp",
    "celery_seed",
    "celery_rpc",
    "celery_redis",
    "dramatiq",
    "huey_sqlite",
    "huey_redis",
    "rq",
)
MEASURES = ("rtt_ms", "tasks_per_s", "mapreduce_ms")


def benchmarks_module(name: str) -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def peers_module() -> Any:
    return benchmarks_module("peers")


def test_a_wrong_result_fails_the_caller_with_a_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    peers = peers_module()
    broken = ModuleType("broken_peer")
    broken.call = lambda n: n * (n + 1) // 2 + 1  # type: ignore[attr-defined]
    monkeypatch.setattr(peers.importlib, "import_module", lambda name: broken)

    with pytest.raises(RuntimeError, match=r"^rq: call\(100\) returned 5051, expected 5050$"):
        peers.run_client("rq", peers.QUICK)


def test_a_failed_system_or_a_missed_enforced_target_fails_the_run() -> None:
    peers = peers_module()
    target = {"enforced": True, "passed": True, "median": 0.5}
    whole = {"errors": {}, "systems": dict.fromkeys(SYSTEMS), "targets": {"t": target}}

    assert peers.failed(whole) == []
    assert peers.failed({**whole, "errors": {"rq": ["round 1: rq: call(100) returned 1"]}}) == [
        "rq: round 1: rq: call(100) returned 1"
    ]
    assert peers.failed({**whole, "systems": {}}) == [f"{name} missing" for name in SYSTEMS]
    assert peers.failed({**whole, "systems": {}}, partial=True) == []
    broken = {**whole, "errors": {"rq": ["round 1: wrong"]}, "systems": {}}
    assert peers.failed(broken, partial=True) == ["rq: round 1: wrong"]
    missed = {**target, "passed": False}
    assert peers.failed({**whole, "targets": {"t": missed}}) == [
        "target t missed (median ratio 0.5)"
    ]
    assert peers.failed({**whole, "targets": {"t": {**missed, "enforced": False}}}) == []


def test_a_turn_that_lost_its_broker_runs_once_more_but_a_wrong_result_does_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    peers = peers_module()
    run = peers.Run(peers.QUICK, False, tmp_path, "redis://unused", {})
    rq = peers.BY_NAME["rq"]
    out = {"rtt_ms": [1.0], "tasks_per_s": [100.0], "mapreduce_ms": [9.0], "results_checked": 7}
    out |= {"cpu_ms_per_op": {m: {"total": 1.0} for m in MEASURES}, "cpu_gaps": []}
    outcomes: list[Any] = [peers.Unavailable("caller exited with 75: ConnectionError"), out]
    attempts: list[int] = []

    def attempt(system: Any, round_index: int, number: int) -> Any:
        attempts.append(number)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(run, "attempt", attempt)
    monkeypatch.setattr(peers, "wait_for_broker", lambda: None)

    run.turn(rq, 0)
    assert attempts == [1, 2]
    assert run.samples["rq"]["rtt_ms"] == {0: [1.0]} and run.errors == {}
    assert len(run.notes) == 1 and "round 1 retried" in run.notes[0]

    outcomes[:] = [RuntimeError("rq: call(100) returned 5051, expected 5050")]
    run.turn(rq, 1)
    assert attempts == [1, 2, 1]
    assert run.errors == {"rq": ["round 2: rq: call(100) returned 5051, expected 5050"]}


def test_cpu_counts_a_reaped_child_through_its_parent_and_reports_an_unreaped_end() -> None:
    cpu_time = benchmarks_module("cpu_time")

    def proc(pid: int, ppid: int, ticks: int, started: int = 1) -> Any:
        return cpu_time.Proc(pid, ppid, "p", started, ticks)

    before = cpu_time.Reading({"w": {1: proc(1, 0, 100), 2: proc(2, 1, 50), 3: proc(3, 1, 10)}})
    # Child 2 ended and was reaped (its 70 ticks are now in 1's cutime); 4 was forked since.
    now = {1: proc(1, 0, 100 + 5 + 70), 3: proc(3, 1, 13), 4: proc(4, 1, 2)}
    after = cpu_time.Reading({"w": now})
    usage = cpu_time.used(before, after)
    assert usage.ms == {"w": (5 + 20 + 3 + 2) * cpu_time.TICK_MS} and usage.gaps == []

    # The root restarted (same pid, another start time): nothing in the group reaped it or its
    # children, so none of their CPU since the first reading is known.
    after = cpu_time.Reading({"w": {1: proc(1, 0, 4, started=9)}})
    usage = cpu_time.used(before, after)
    assert usage.gaps == [f"w: p (pid {pid}) ended uncounted" for pid in (1, 2, 3)]
