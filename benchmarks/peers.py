"""Compare batchapp with stock Celery, Dramatiq, Huey and RQ on this machine, in one run.

    python benchmarks/peers.py            # 7 interleaved rounds (about 20 minutes), a table
    python benchmarks/peers.py --quick    # one small round, about a minute (the test suite's)
    python benchmarks/peers.py --json     # one JSON object on stdout (progress on stderr)

Every system runs with 2 worker processes and results stored, on its own RabbitMQ vhost, Redis
database (of a redis-server this run starts), SQLite files and queue names. Rounds interleave:
round 1 runs every system once, round 2 every system again, and so on, each turn with fresh
workers, so a machine that is slower for a while slows every system alike. The caller side of
each turn runs in a child process (``peers.py --client NAME``) with that system's environment;
the calls themselves live in ``peer_apps/<system>.py``. The caller also reads the CPU time each
group of processes (caller, workers, RabbitMQ, Redis) spends on each measure (``cpu_time.py``).
Everything the run starts is stopped on exit, on SIGTERM/SIGINT and on ``--timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import cpu_time
from harness import registering, stop_on_signals

from batchapp.cli import processes
from batchapp.sums import sum_to
from tests.support import (
    AdminCommandError,
    BrokerUnreachable,
    admin_command,
    rabbitmq_vhost,
    require_broker,
    sweep_stale_vhosts,
)

HERE = Path(__file__).resolve().parent
JSONDict = dict[str, Any]
CLIENT_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 90.0
RABBITMQ_PORT = 5672
ROOT_BROKER_URL = f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}//"
MEASURES = ("rtt_ms", "tasks_per_s", "mapreduce_ms")
RTT_N = 100
MAPREDUCE_N, MAPREDUCE_CHUNK = 100, 10  # 10 chunks of 10


@dataclass(frozen=True)
class Sizes:
    rounds: int
    warmup: int
    rtt_calls: int
    tasks: int
    mapreduce_runs: int


FULL = Sizes(rounds=7, warmup=5, rtt_calls=30, tasks=2000, mapreduce_runs=5)
# 20 timed calls: 5 cost Huey's whole path less than one clock tick of CPU (cpu_time.py).
QUICK = Sizes(rounds=1, warmup=2, rtt_calls=20, tasks=100, mapreduce_runs=2)


@dataclass(frozen=True)
class System:
    """One configuration compared: its caller module, its workers and what it stores where."""

    name: str
    label: str
    module: str
    vhost: bool = False
    redis_db: int | None = None
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def celery_pool(self) -> bool:
        """Its worker is Celery's: a main process that consumes, and a pool that runs tasks."""
        return self.module in ("batchapp_peer", "celery_peer")


SYSTEMS = (
    System("batchapp", "batchapp (SQLite results, job ledger)", "batchapp_peer", vhost=True),
    System(
        "celery_seed",
        "Celery configured as in the classic tutorial (db+sqlite results)",
        "celery_peer",
        vhost=True,
        settings=(("MAPREDUCE", "chord"), ("PREFETCH", "4")),
    ),
    System(
        "celery_rpc",
        "Celery, rpc:// results",
        "celery_peer",
        vhost=True,
        settings=(("RESULT_BACKEND", "rpc://"), ("MAPREDUCE", "group"), ("PREFETCH", "64")),
    ),
    System(
        "celery_redis",
        "Celery, Redis results",
        "celery_peer",
        vhost=True,
        redis_db=1,
        settings=(("MAPREDUCE", "chord"), ("PREFETCH", "64")),
    ),
    System("dramatiq", "Dramatiq, RabbitMQ + Redis results", "dramatiq_peer", True, 2),
    System("huey_sqlite", "Huey, SqliteHuey", "huey_peer", settings=(("HUEY", "sqlite"),)),
    System("huey_redis", "Huey, RedisHuey", "huey_peer", redis_db=3, settings=(("HUEY", "redis"),)),
    System("rq", "RQ (SimpleWorker)", "rq_peer", redis_db=4),
)
BY_NAME = {system.name: system for system in SYSTEMS}


def progress(message: str) -> None:
    # stderr, so that --json keeps stdout for the one JSON object.
    print(f"[peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- stopping ----------------------------------------------------------------------------------


# The runner's stop signals and their hold-back are the benchmark harness's (harness.py).


class Unavailable(RuntimeError):
    """The caller lost its broker or Redis: the turn may be run once more."""


EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """What a caller raises when its broker or Redis went away, for every system compared."""
    from kombu.exceptions import OperationalError

    found: list[type[BaseException]] = [OSError, OperationalError]
    with contextlib.suppress(ImportError):
        from redis.exceptions import ConnectionError as RedisConnectionError

        found.append(RedisConnectionError)
    with contextlib.suppress(ImportError):
        from pika.exceptions import AMQPConnectionError

        found.append(AMQPConnectionError)
    return tuple(found)


def wait_for_broker(timeout: float = 180.0) -> None:
    """Poll the machine's RabbitMQ until it answers (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return require_broker(ROOT_BROKER_URL)
        except BrokerUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def one_line(error: object) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)


class Process(processes.CeleryProcess):
    """Any command in a process group of its own, logging to a file; stopped like a worker."""

    def __init__(self, command: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.command = Path(command[2] if command[1] == "-m" else command[0]).name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            list(command),
            env=env,
            cwd=log_path.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# -- the run's own services ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[tuple[str, int]]:
    """A redis-server of this run's own (no snapshots), stopped afterwards; yields URL and pid."""
    if shutil.which("redis-server") is None:
        raise SystemExit("peers.py: redis-server is not on the PATH (apt-get install redis-server)")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(folder)]
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    server = None
    try:
        with registering():
            server = Process(command, env, folder / "redis.log")
        server.wait_for_log("Ready to accept connections", timeout=30)
        yield f"redis://127.0.0.1:{port}", server.pid
    finally:
        if server is not None:
            server.stop()


@dataclass
class Run:
    """One benchmark run: its folder, vhosts, Redis, and every sample so far."""

    sizes: Sizes
    quick: bool
    root: Path
    redis_url: str
    vhosts: dict[str, str]
    redis_pid: int | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    # samples[system][measure][round index] -> that turn's samples
    samples: dict[str, dict[str, dict[int, list[float]]]] = field(default_factory=dict)
    # cpu[system][measure][round index] -> CPU ms per operation of each group of processes
    cpu: dict[str, dict[str, dict[int, dict[str, float]]]] = field(default_factory=dict)
    cpu_gaps: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    loadavg_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def environment(self, system: System, folder: Path) -> dict[str, str]:
        """The system's own broker, store and queue; nothing inherited that could redirect it."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("BATCHAPP_", "PEERS_")) and key != "PYTHONWARNINGS"
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["PEERS_QUEUE"] = f"peers-{system.name}-{self.tag}"
        env["PEERS_SQLITE"] = str(folder / "queue.sqlite")
        if system.vhost:
            env["PEERS_BROKER_URL"] = self.vhosts[system.name]
        # Celery's backend is Redis where the system has a database, else SQLite (the tutorial's).
        env["PEERS_RESULT_BACKEND"] = f"db+sqlite:///{folder / 'results.sqlite'}"
        if system.redis_db is not None:
            env["PEERS_REDIS_URL"] = f"{self.redis_url}/{system.redis_db}"
            env["PEERS_RESULT_BACKEND"] = env["PEERS_REDIS_URL"]
        env |= {f"PEERS_{key}": value for key, value in system.settings}
        if system.name == "batchapp":
            env |= {
                "BATCHAPP_BROKER_URL": self.vhosts[system.name],
                "BATCHAPP_DATA_DIR": str(folder),
                "BATCHAPP_DATABASE_URL": f"sqlite:///{folder / 'batchapp.sqlite'}",
            }
        return env

    def turn(self, system: System, round_index: int) -> None:
        """The three measures for ``system`` in this round; failures are recorded, not raised.

        A turn that lost its broker or Redis (another test run may restart the machine's
        RabbitMQ) is run once more when the broker answers again; a wrong result never is.
        """
        for attempt in (1, 2):
            try:
                out = self.attempt(system, round_index, attempt)
            except (Unavailable, processes.ProcessFailed) as exc:
                if attempt == 2:
                    self.failed(system, round_index, exc)
                    return
                progress(f"{system.name}: {one_line(exc)}; once more when RabbitMQ answers")
                self.notes.append(f"{system.name} round {round_index + 1} retried: {exc}")
                try:
                    wait_for_broker()
                except BrokerUnreachable as unreachable:
                    self.failed(system, round_index, unreachable)
                    return
            except Exception as exc:
                self.failed(system, round_index, exc)
                return
            else:
                self.record(system, round_index, out)
                return

    def attempt(self, system: System, round_index: int, attempt: int) -> JSONDict:
        """Fresh workers for ``system``, the caller in a child process, the workers stopped."""
        suffix = "" if attempt == 1 else f"-attempt{attempt}"
        folder = self.root / system.name / f"round{round_index + 1}{suffix}"
        folder.mkdir(parents=True)
        env = self.environment(system, folder)
        started: list[Process] = []
        try:
            commands, (marker, count) = worker_commands(system, env)
            for number, command in enumerate(commands, 1):
                with registering():
                    started.append(Process(command, env, folder / f"worker{number}.log"))
            for worker in started:
                worker.wait_for_log(marker, READY_TIMEOUT_S, count)
            # The caller reads these processes' CPU time around each measure.
            pids = {"PEERS_WORKER_PIDS": " ".join(str(worker.pid) for worker in started)}
            if self.redis_pid is not None:
                pids["PEERS_REDIS_PID"] = str(self.redis_pid)
            return client(system, env | pids, folder, self.sizes)
        finally:
            for worker in started:
                worker.stop()

    def failed(self, system: System, round_index: int, exc: Exception) -> None:
        message = f"round {round_index + 1}: {exc}"
        progress(f"{system.name}: FAILED {one_line(message)}")
        self.errors.setdefault(system.name, []).append(message[-3000:])

    def record(self, system: System, round_index: int, out: JSONDict) -> None:
        self.checked[system.name] = self.checked.get(system.name, 0) + out["results_checked"]
        series = self.samples.setdefault(system.name, {m: {} for m in MEASURES})
        cpu = self.cpu.setdefault(system.name, {m: {} for m in MEASURES})
        for measure in MEASURES:
            series[measure][round_index] = out[measure]
            cpu[measure][round_index] = out["cpu_ms_per_op"][measure]
        for gap in out["cpu_gaps"]:
            self.cpu_gaps.setdefault(system.name, []).append(f"round {round_index + 1} {gap}")
        progress(
            f"{system.name}: rtt {statistics.median(out['rtt_ms']):.1f} ms, "
            f"{out['tasks_per_s'][0]:.0f} tasks/s, "
            f"map-reduce {statistics.median(out['mapreduce_ms']):.0f} ms"
        )


def worker_commands(system: System, env: dict[str, str]) -> tuple[list[list[str]], tuple[str, int]]:
    """The system's worker processes (2 each, as its docs run them) and their ready line."""
    python, queue = sys.executable, env["PEERS_QUEUE"]
    celery = ["-c", "2", "-l", "INFO", "-n", f"{queue}@%h", "--without-mingle", "--without-gossip"]
    match system.module:
        case "batchapp_peer":
            return [[python, "-m", "celery", "-A", "batchapp", "worker", *celery]], (" ready.", 1)
        case "celery_peer":
            app = "peer_apps.celery_peer"
            return [[python, "-m", "celery", "-A", app, "worker", *celery]], (" ready.", 1)
        case "dramatiq_peer":
            command = [python, "-m", "dramatiq", "peer_apps.dramatiq_peer", "--processes", "2"]
            return [command], ("Worker process is ready for action.", 2)
        case "huey_peer":
            consumer = [python, "-m", "huey.bin.huey_consumer", "peer_apps.huey_peer.huey"]
            return [[*consumer, "-k", "process", "-w", "2"]], ("Huey consumer started", 1)
        case "rq_peer":
            # SimpleWorker: RQ's docs call it the fast one for jobs of a few milliseconds.
            rq = [python, "-m", "rq.cli", "worker", "--worker-class", "rq.worker.SimpleWorker"]
            command = [*rq, "--url", env["PEERS_REDIS_URL"], queue]
            return [command, command], ("Listening on", 1)
    raise ValueError(f"no workers for {system.module}")


def client(system: System, env: dict[str, str], folder: Path, sizes: Sizes) -> JSONDict:
    """``peers.py --client NAME`` in the system's environment; its JSON line."""
    params = json.dumps(sizes.__dict__)
    command = [sys.executable, str(Path(__file__).resolve()), "--client", system.name]
    popen = None
    try:
        with registering():
            popen = subprocess.Popen(
                [*command, "--params", params],
                env=env,
                cwd=folder,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        stdout, stderr = popen.communicate(timeout=CLIENT_TIMEOUT_S)
    finally:
        if popen is not None and popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    if popen.returncode != 0:
        lines = [line for line in stderr.splitlines() if line.strip()] or ["(no output)"]
        error = Unavailable if popen.returncode == EXIT_UNAVAILABLE else RuntimeError
        raise error(f"caller exited with {popen.returncode}: {lines[-1]}")
    result: JSONDict = json.loads(stdout.splitlines()[-1])
    return result


# -- the caller side (child process) -------------------------------------------------------------


def env_pids(variable: str) -> list[int]:
    return [int(pid) for pid in os.environ.get(variable, "").split()]


def cpu_groups(system: System) -> dict[str, cpu_time.Selector]:
    """The processes whose CPU a measure of ``system`` costs, by group: the broker and Redis
    only where the system uses them, so no system is charged another's idle server."""
    workers = env_pids("PEERS_WORKER_PIDS")
    groups = {"caller": cpu_time.exactly([os.getpid()])}
    if system.celery_pool:
        groups |= {"worker_main": cpu_time.exactly(workers), "worker_pool": cpu_time.below(workers)}
    else:
        groups["workers"] = cpu_time.tree(workers)
    if system.vhost:
        rabbitmq = cpu_time.serving("beam.smp", RABBITMQ_PORT)
        if not rabbitmq:
            # A zero would read as a free broker; say it cannot be measured instead.
            raise RuntimeError(
                f"no beam.smp found listening on port {RABBITMQ_PORT} (is /proc/<pid>/fd "
                "readable?): RabbitMQ's CPU cannot be measured"
            )
        groups["rabbitmq"] = cpu_time.exactly(rabbitmq)
    if system.redis_db is not None:
        groups["redis"] = cpu_time.exactly(env_pids("PEERS_REDIS_PID"))
    return groups


def per_operation(ms: dict[str, float], operations: int) -> dict[str, float]:
    """Each group's CPU ms per operation, with ``workers`` (main + pool) and ``total``."""
    figures = {group: spent / operations for group, spent in ms.items()}
    if "worker_main" in figures:
        figures["workers"] = figures["worker_main"] + figures["worker_pool"]
    parts = ("caller", "workers", "rabbitmq", "redis")
    figures["total"] = sum(figures.get(group, 0.0) for group in parts)
    return figures


@dataclass
class CpuMeter:
    """CPU per operation of each measure, read around (never inside) its timed section."""

    groups: dict[str, cpu_time.Selector]
    per_op: dict[str, dict[str, float]] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def measure(self, name: str, operations: int) -> Iterator[None]:
        before = cpu_time.read(self.groups)
        yield
        usage = cpu_time.used(before, cpu_time.read(self.groups, own_first=True))
        self.per_op[name] = per_operation(usage.ms, operations)
        self.gaps += [f"{name}: {gap}" for gap in usage.gaps]


def run_client(name: str, sizes: Sizes) -> JSONDict:
    """The three measures for one system, each result checked against sum_to."""
    peer = importlib.import_module(f"peer_apps.{BY_NAME[name].module}")
    meter = CpuMeter(cpu_groups(BY_NAME[name]))
    count = 0

    def checked(what: str, got: object, expected: object) -> None:
        nonlocal count
        if got != expected:
            raise RuntimeError(f"{name}: {what} returned {got!r}, expected {expected!r}")
        count += len(got) if isinstance(got, list) else 1

    for _ in range(sizes.warmup):
        checked(f"call({RTT_N})", peer.call(RTT_N), sum_to(RTT_N))
    rtt = []
    with meter.measure("rtt_ms", sizes.rtt_calls):
        for _ in range(sizes.rtt_calls):
            start = time.perf_counter()
            value = peer.call(RTT_N)
            rtt.append((time.perf_counter() - start) * 1000)
            checked(f"call({RTT_N})", value, sum_to(RTT_N))

    ns = [number % 1000 for number in range(sizes.tasks)]
    with meter.measure("tasks_per_s", len(ns)):
        start = time.perf_counter()
        values = peer.call_many(ns)
        tasks_per_s = len(ns) / (time.perf_counter() - start)
    checked(f"call_many of {len(ns)}", values, [sum_to(n) for n in ns])

    checked("map_reduce", peer.map_reduce(MAPREDUCE_N, MAPREDUCE_CHUNK), sum_to(MAPREDUCE_N))
    mapreduce = []
    with meter.measure("mapreduce_ms", sizes.mapreduce_runs):
        for _ in range(sizes.mapreduce_runs):
            start = time.perf_counter()
            total = peer.map_reduce(MAPREDUCE_N, MAPREDUCE_CHUNK)
            mapreduce.append((time.perf_counter() - start) * 1000)
            checked("map_reduce", total, sum_to(MAPREDUCE_N))
    return {
        "rtt_ms": rtt,
        "tasks_per_s": [tasks_per_s],
        "mapreduce_ms": mapreduce,
        "cpu_ms_per_op": meter.per_op,
        "cpu_gaps": meter.gaps,
        "results_checked": count,
    }


def client_main(name: str, sizes: Sizes) -> int:
    """Run the caller; a failure ends it with one line on stderr (and 75 if it lost a service)."""
    try:
        figures = run_client(name, sizes)
    except Exception as exc:
        print(f"{type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return EXIT_UNAVAILABLE if isinstance(exc, unavailable_errors()) else 1
    print(json.dumps(figures))
    return 0


# -- figures and targets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A per-round ratio of batchapp to a peer, and the limit its median must meet."""

    name: str
    measure: str
    peer: str  # a system, or "best" for the best peer of each round
    op: str
    limit: float = 1.0


TARGETS = (
    Target("rtt <= dramatiq", "rtt_ms", "dramatiq", "<="),
    Target("tasks/s >= best peer", "tasks_per_s", "best", ">="),
    Target("map-reduce <= dramatiq", "mapreduce_ms", "dramatiq", "<="),
)


def summary(values: Sequence[float]) -> JSONDict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def round_medians(run: Run, name: str, measure: str) -> dict[int, float]:
    turns = run.samples.get(name, {}).get(measure, {})
    return {index: statistics.median(turn) for index, turn in sorted(turns.items())}


def per_round_ratios(run: Run) -> dict[str, dict[str, list[float]]]:
    """Each system's round median over batchapp's in the same round (only whole rounds)."""
    ratios: dict[str, dict[str, list[float]]] = {}
    for system in SYSTEMS:
        ratios[system.name] = {}
        for measure in MEASURES:
            mine = round_medians(run, system.name, measure)
            ours = round_medians(run, "batchapp", measure)
            ratios[system.name][measure] = [mine[i] / ours[i] for i in mine if i in ours]
    return ratios


def check_target(run: Run, target: Target) -> JSONDict:
    ours = round_medians(run, "batchapp", target.measure)
    peers = [s.name for s in SYSTEMS if s.name != "batchapp"] if target.peer == "best" else []
    theirs = [round_medians(run, name, target.measure) for name in peers or [target.peer]]
    rounds = []
    for index, value in ours.items():
        # The best peer of the round is the highest figure for tasks/s, the lowest for times.
        found = [series[index] for series in theirs if index in series]
        if found:
            best = max(found) if target.op == ">=" else min(found)
            rounds.append(value / best)
    median = statistics.median(rounds) if rounds else None
    passed = None
    if median is not None:
        passed = median <= target.limit if target.op == "<=" else median >= target.limit
    return {
        "target": f"batchapp/{target.peer} {target.measure} {target.op} {target.limit:g}",
        "per_round": rounds,
        "median": median,
        "passed": passed,
        # Quick runs report targets only: one small round on a shared machine is noise.
        "enforced": not run.quick,
    }


def versions() -> JSONDict:
    found: JSONDict = {}
    for package in ("batchapp", "celery", "kombu", "dramatiq", "pika", "huey", "rq", "redis"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    found["sqlite"] = sqlite3.sqlite_version
    found["python"] = sys.version.split()[0]
    for name, command in (
        ("redis-server", ["redis-server", "--version"]),
        ("rabbitmq", ["rabbitmqctl", "-q", "version"]),
    ):
        with contextlib.suppress(AdminCommandError):
            found[name] = admin_command(command).strip().split("\n")[0]
    return found


def cpu_medians(run: Run, name: str) -> dict[str, dict[str, float]]:
    """Each group's CPU ms per operation for every measure, the median over rounds."""
    medians = {}
    for measure, turns in run.cpu[name].items():
        groups = next(iter(turns.values()), {})
        medians[measure] = {
            group: statistics.median(turn[group] for turn in turns.values()) for group in groups
        }
    return medians


def figures(run: Run) -> JSONDict:
    systems: JSONDict = {}
    for system in SYSTEMS:
        series = run.samples.get(system.name)
        if not series:
            continue
        systems[system.name] = {
            "label": system.label,
            "rounds": len(series["rtt_ms"]),
            "results_checked": run.checked[system.name],
        }
        for measure in MEASURES:
            turns = series[measure].values()
            systems[system.name][measure] = summary([x for turn in turns for x in turn])
        systems[system.name]["cpu_ms_per_op"] = cpu_medians(run, system.name)
        systems[system.name]["cpu_gaps"] = run.cpu_gaps.get(system.name, [])
    return {
        "quick": run.quick,
        "sizes": run.sizes.__dict__,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": run.loadavg_at_start,
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": versions(),
        "systems": systems,
        "ratios_to_batchapp": per_round_ratios(run),
        "targets": {target.name: check_target(run, target) for target in TARGETS},
        "errors": run.errors,
        "notes": run.notes,
    }


def failed(result: JSONDict, partial: bool = False) -> list[str]:
    """Why the run must exit non-zero: a system that failed or is missing, or a missed enforced
    target (a ``partial`` run, of some systems by choice, is judged on its failures only)."""
    reasons = [f"{name}: {errors[0].splitlines()[0]}" for name, errors in result["errors"].items()]
    if partial:
        return reasons
    reasons += [f"{name} missing" for name in BY_NAME if name not in result["systems"]]
    for name, target in result["targets"].items():
        if target["enforced"] and not target["passed"]:
            reasons.append(f"target {name} missed (median ratio {target['median']})")
    return reasons


def render(result: JSONDict) -> str:
    lines = [
        "| system | round trip ms | tasks/s | 10-chunk map-reduce ms | x batchapp (rtt, tasks/s, "
        "map-reduce; median per-round ratio) |",
        "|---|---|---|---|---|",
    ]
    for name, figure in result["systems"].items():
        cells = [
            f"{figure[m]['median']:.1f} ({figure[m]['min']:.1f}-{figure[m]['max']:.1f})"
            for m in MEASURES
        ]
        ratios = result["ratios_to_batchapp"][name]
        relative = ", ".join(
            f"{statistics.median(ratios[m]):.2f}" if ratios[m] else "-" for m in MEASURES
        )
        lines.append(f"| {figure['label']} | {' | '.join(cells)} | {relative} |")
    lines += ["", "Per-round ratios to batchapp (each system's round median over batchapp's):"]
    for name, ratios in result["ratios_to_batchapp"].items():
        if name != "batchapp" and any(ratios.values()):
            cells = (f"{m} {' '.join(f'{r:.2f}' for r in ratios[m])}" for m in MEASURES)
            lines.append(f"  {name}: {'; '.join(cells)}")
    lines += render_cpu(result)
    lines.append("")
    for name, target in result["targets"].items():
        verdict = {True: "pass", False: "MISSED", None: "no figure"}[target["passed"]]
        note = "" if target["enforced"] else " (quick: reported, not enforced)"
        median = "-" if target["median"] is None else f"{target['median']:.2f}"
        lines.append(f"target {name}: median per-round ratio {median}: {verdict}{note}")
    lines += [f"FAILED {name}: {errors[0]}" for name, errors in result["errors"].items()]
    return "\n".join(lines)


def render_cpu(result: JSONDict) -> list[str]:
    """The CPU table: where each system's time goes, and the tasks/s its total CPU allows."""
    cpus = result["machine"]["cpus"]
    lines = [
        "",
        "CPU per operation, ms: caller/workers/broker/total (broker: RabbitMQ and Redis where "
        f"used); bound: {cpus} cores / total CPU per task",
        "| system | rtt | tasks/s | map-reduce | worker main/pool per task | bound tasks/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, figure in result["systems"].items():
        cells = []
        for measure in MEASURES:
            cpu = figure["cpu_ms_per_op"][measure]
            broker = cpu.get("rabbitmq", 0.0) + cpu.get("redis", 0.0)
            parts = (cpu["caller"], cpu["workers"], broker, cpu["total"])
            cells.append("/".join(f"{part:.2f}" for part in parts))
        task = figure["cpu_ms_per_op"]["tasks_per_s"]
        split = "-"
        if "worker_main" in task:
            split = f"{task['worker_main']:.2f}/{task['worker_pool']:.2f}"
        bound = f"{cpus * 1000 / task['total']:.0f}" if task["total"] else "-"
        lines.append(f"| {name} | {' | '.join(cells)} | {split} | {bound} |")
    for name, figure in result["systems"].items():
        lines += [f"CPU gap (figure low) {name} {gap}" for gap in figure["cpu_gaps"]]
    return lines


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(item) for item in value]
    return value


# -- entry point ---------------------------------------------------------------------------------


def run_all(sizes: Sizes, quick: bool, only: Sequence[str]) -> JSONDict:
    systems = [system for system in SYSTEMS if not only or system.name in only]
    if swept := sweep_stale_vhosts():
        progress(f"deleted vhosts killed runs left: {' '.join(swept)}")
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="batchapp-peers-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        vhosts = {
            s.name: stack.enter_context(rabbitmq_vhost(f"batchapp-peers-{s.name}"))
            for s in systems
            if s.vhost
        }
        redis_url, redis_pid = stack.enter_context(redis_server(root))
        names = " ".join(sorted(url.rsplit("/", 1)[1] for url in vhosts.values()))
        progress(f"run folder {root}, vhosts {names}, {redis_url}")
        run = Run(sizes, quick, root, redis_url, vhosts, redis_pid)
        for round_index in range(sizes.rounds):
            # A different system goes first each round, so none always runs on a cold machine.
            shift = round_index % len(systems)
            for system in systems[shift:] + systems[:shift]:
                progress(f"round {round_index + 1}/{sizes.rounds}: {system.name}")
                run.turn(system, round_index)
        return figures(run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small round (the test's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, help="rounds instead of 7 (1 with --quick)")
    parser.add_argument("--only", nargs="+", choices=sorted(BY_NAME), help="these systems only")
    parser.add_argument("--timeout", type=float, help="stop everything after this many seconds")
    parser.add_argument("--client", choices=sorted(BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args.client, Sizes(**json.loads(args.params)))
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**sizes.__dict__, "rounds": args.rounds})
    stop_on_signals()
    if args.timeout:
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
    result = rounded(run_all(sizes, args.quick, args.only or ()))
    print(json.dumps(result, indent=2) if args.json else render(result))
    reasons = failed(result, partial=bool(args.only))
    for reason in reasons:
        progress(f"FAILED: {reason}")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
