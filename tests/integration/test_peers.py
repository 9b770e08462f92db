"""The peers benchmark runs every system at quick sizes, checks every result, and cleans up.

Its bookkeeping (results, targets, retried turns, CPU time) is tested in tests/unit/test_peers.py.
It never asserts a speed: quick figures on a shared machine are noise. Its targets are only
reported in quick mode; the full run (benchmarks/peers.py without --quick) enforces them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import rabbitmqctl
from tests.unit.test_peers import MEASURES, SYSTEMS

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "peers.py"
CELERY_WORKERS = ("batchapp", "celery_seed", "celery_rpc", "celery_redis")
ON_RABBITMQ = ("batchapp", "celery_seed", "celery_rpc", "celery_redis", "dramatiq")
ON_REDIS = ("celery_redis", "dramatiq", "huey_redis", "rq")


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
            # Not > 0 here: the kernel charges CPU in 10 ms clock ticks to whichever process
            # runs at the tick, and a quick Dramatiq rtt (20 calls) or map-reduce (2 runs) costs
            # about five ticks in all, so now and then every group is charged none.
            assert cpu["total"] == pytest.approx(parts, abs=0.01), f"{name} {measure}: {cpu}"
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
    listed = rabbitmqctl("list_vhosts", "name", "--no-table-headers").split()
    assert not set(vhosts.split()) & set(listed)
