"""The peers benchmark runs every system at quick sizes, checks every result, and cleans up.

It never asserts a speed: quick figures on a shared machine are noise. Its targets are only
reported in quick mode; the full run (benchmarks/peers.py without --quick) enforces them.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "peers.py"
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
CELERY_WORKERS = ("batchapp", "celery_seed", "celery_rpc", "celery_redis")
ON_RABBITMQ = ("batchapp", "celery_seed", "celery_rpc", "celery_redis", "dramatiq")
ON_REDIS = ("celery_redis", "dramatiq", "huey_redis", "rq")


def benchmarks_module(name: str) -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def peers_module() -> Any:
    return benchmarks_module("peers")


def expected_cpu_groups(name: str) -> set[str]:
    groups = {"caller", "workers", "total"}
    if name in CELERY_WORKERS:
        groups |= {"worker_main", "worker_pool"}
    if name in ON_RABBITMQ:
        groups.add("rabbitmq")
    if name in ON_REDIS:
        groups.add("redis")
    return groups


def run_quick(timeout: float = 240) -> tuple[int, str, str]:
    """``peers.py --quick --json``; past ``timeout``, SIGTERM, so it still stops its workers."""
    runner = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = runner.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        runner.terminate()
        stdout, stderr = runner.communicate(timeout=120)
        pytest.fail(f"peers.py --quick took over {timeout:g} s:\n{stderr[-4000:]}")
    return runner.returncode, stdout, stderr


def test_quick_run_measures_every_system_and_checks_every_result() -> None:
    returncode, stdout, stderr = run_quick()

    assert returncode == 0, stderr[-4000:]
    result = json.loads(stdout)
    assert result["errors"] == {}
    assert sorted(result["systems"]) == sorted(SYSTEMS)
    sizes = result["sizes"]
    # warm-up and timed calls, every task of the throughput batch, every map-reduce (+1 warm-up)
    expected = sizes["warmup"] + sizes["rtt_calls"] + sizes["tasks"] + sizes["mapreduce_runs"] + 1
    for name, figure in result["systems"].items():
        assert figure["results_checked"] == expected, name
        for measure in MEASURES:
            low, mid, high = (figure[measure][key] for key in ("min", "median", "max"))
            assert 0 < low <= mid <= high, f"{name} {measure}: {figure[measure]}"
        ratios = result["ratios_to_batchapp"][name]
        assert all(len(ratios[m]) == 1 and ratios[m][0] > 0 for m in MEASURES), name
        assert figure["cpu_gaps"] == [], name
        for measure in MEASURES:
            cpu = figure["cpu_ms_per_op"][measure]
            assert set(cpu) == expected_cpu_groups(name), f"{name} {measure}: {cpu}"
            assert all(value >= 0 for value in cpu.values()), f"{name} {measure}: {cpu}"
            parts = sum(cpu.get(group, 0) for group in ("caller", "workers", "rabbitmq", "redis"))
            assert cpu["total"] > 0 and cpu["total"] == pytest.approx(parts, abs=0.01), name
        # 100 tasks cost every caller and every worker well over one clock tick.
        tasks = figure["cpu_ms_per_op"]["tasks_per_s"]
        assert tasks["caller"] > 0 and tasks["workers"] > 0, f"{name}: {tasks}"
        if name in CELERY_WORKERS:
            split = tasks["worker_main"] + tasks["worker_pool"]
            assert tasks["worker_pool"] > 0 and split == pytest.approx(tasks["workers"], abs=0.01)
    assert result["ratios_to_batchapp"]["batchapp"] == {m: [1.0] for m in MEASURES}
    for name, target in result["targets"].items():
        assert target["enforced"] is False and len(target["per_round"]) == 1, name
        assert target["passed"] in (True, False), name
    for package in ("celery", "dramatiq", "huey", "rq", "redis", "redis-server", "rabbitmq"):
        assert result["versions"][package], package


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


def processes_under(folder: str) -> list[int]:
    """Processes whose working folder or command line is inside ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(folder) or folder in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_every_process_and_removes_vhosts_and_files(signum: int) -> None:
    runner = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--only", "batchapp", "dramatiq"],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stderr is not None
        line = ""
        while "run folder" not in line:
            line = runner.stderr.readline()
            assert line, "peers.py ended before it named its run folder"
        _, _, rest = line.partition("run folder ")
        folder, vhosts = rest.split(", vhosts ")[0], rest.split(", vhosts ")[1].split(", ")[0]
        deadline = time.monotonic() + 90
        # Workers of the first system: a redis-server alone is not enough to stop.
        while len(processes_under(folder)) < 3:
            assert time.monotonic() < deadline, "no workers started within 90 s"
            time.sleep(0.1)

        runner.send_signal(signum)
        runner.wait(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()

    assert runner.returncode == 128 + signum
    assert processes_under(folder) == []
    assert not Path(folder).exists()
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert not set(vhosts.split()) & set(listed)


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
