"""What every measure shares: variants with their own workers, clients, figures and targets.

A measure module (``bm_<name>.py``) holds its sizes, its parent side (``measure``: starts the
workers it needs through a :class:`Variant`), its caller side (``client``: run in a child
process with the variant's environment, because ``batchapp.celery`` reads its settings once per
process) and its targets (``targets``). Everything a run starts is registered with a
:class:`Guard`, a process of its own that stops it all if the runner dies without cleaning up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

# The benchmarks share the test suite's support (a vhost of their own, the broker check), which
# is not part of the installed package: the repository's root goes on the path.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from batchapp.cli import processes  # noqa: E402
from batchapp.jobs.sales_csv import write_sample  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "run.py"
GUARD = HERE / "guard.py"
LOCKED = "database is locked"
CLIENT_TIMEOUT_S = 3600.0
# Quick runs are small and the machine is shared: a timing target gets this much slack there.
QUICK_SLACK = 2.0
# Runtimes print as 0.0123 or, when tiny, 9.2e-05.
SUCCEEDED = re.compile(r"Task (\S+)\[[^\]]+\] succeeded in ([0-9.]+(?:e-?[0-9]+)?)s")

JSONDict = dict[str, Any]


def spread(samples: Sequence[float]) -> JSONDict:
    """Median with p10/p90 and min/max, so a reader sees how noisy a figure is."""
    ordered = sorted(samples)
    deciles = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else []
    return {
        "median": statistics.median(ordered),
        "p10": deciles[0] if deciles else ordered[0],
        "p90": deciles[-1] if deciles else ordered[0],
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def progress(message: str) -> None:
    # stderr, so that --json keeps stdout for the one JSON object.
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def task_runtimes(log: str, task_name: str) -> list[float]:
    """Seconds each ``task_name`` ran, from the worker's own "succeeded in" lines."""
    return [float(s) for name, s in SUCCEEDED.findall(log) if name == task_name]


# -- stopping ---------------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)


class Interrupted(SystemExit):
    """A signal or the run's timeout: unwinds through every ``finally`` that stops something."""


_deferring = 0
_pending: int | None = None


def stop_on_signals() -> None:
    """SIGTERM, SIGINT and SIGALRM (``--timeout``) raise :class:`Interrupted` in the runner."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    global _pending
    # Once is enough: a second Ctrl-C must not cut the clean-up short (the guard is the backstop).
    for handled in STOP_SIGNALS:
        signal.signal(handled, signal.SIG_IGN)
    progress(f"{signal.Signals(signum).name}: stopping everything this run started")
    if _deferring:
        _pending = signum
    else:
        raise Interrupted(128 + signum)


@contextlib.contextmanager
def registering() -> Iterator[None]:
    """Hold a stop signal back while a process is started and registered for clean-up.

    Raised between ``Popen`` and the registration, the process would be nobody's to stop.
    """
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(128 + signum)


# -- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One row of the table: a figure, its reference, and whether it met its target."""

    measure: str
    value: str
    reference: str
    ratio: float | None = None
    target: str = "-"
    passed: bool | None = None


def timing(row: Target, op: str, limit: float, quick: bool, figure: float | None = None) -> Target:
    """``row`` checked against a timing target (``figure``, or the row's ratio).

    Quick runs loosen timing targets by :data:`QUICK_SLACK`: their sizes are small and the
    machine is shared, so they catch a design that is many times off, not a 20% drift.
    """
    if quick:
        limit = limit * QUICK_SLACK if op == "<=" else limit / QUICK_SLACK
    return exact(row, op, limit, figure)


def exact(row: Target, op: str, limit: float, figure: float | None = None) -> Target:
    """``row`` checked against a target that holds on any machine (a count, a memory ratio)."""
    value = row.ratio if figure is None else figure
    passed = None
    if value is not None:
        passed = {"<=": value <= limit, ">=": value >= limit, "==": value == limit}[op]
    return Target(**{**row.__dict__, "target": f"{op} {limit:g}", "passed": passed})


# -- the guard ---------------------------------------------------------------------------------


class Guard:
    """A separate process told about every process group and vhost a run makes.

    It reads registrations from a pipe only this runner holds. If the runner dies, however
    (SIGKILL from a timeout included), the pipe closes, and unless the runner said ``done`` the
    guard stops the groups it still holds, deletes the vhost and removes the folder.
    """

    def __init__(self) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(GUARD)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            text=True,
            # Its own session: a Ctrl-C or a killpg meant for the runner does not reach it.
            start_new_session=True,
        )

    def tell(self, kind: str, value: object) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(f"{kind} {value}\n")
        self.popen.stdin.flush()

    def release(self) -> None:
        """The runner cleaned up after itself: the guard exits without doing anything."""
        self.tell("done", "")
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        self.popen.wait(30)


# -- variants ----------------------------------------------------------------------------------


@dataclass
class Variant:
    """One configuration: its own data folder and the environment its processes get."""

    name: str
    data_dir: Path
    env: dict[str, str]
    guard: Guard

    @contextlib.contextmanager
    def workers(
        self, count: int = 1, concurrency: int = 2, extra: Sequence[str] = ()
    ) -> Iterator[list[processes.CeleryProcess]]:
        """``count`` workers with this variant's environment, always stopped afterwards."""
        started: list[processes.CeleryProcess] = []
        try:
            for number in range(1, count + 1):
                with registering():
                    worker = processes.worker(
                        self.env,
                        self.data_dir / "logs" / f"worker{number}.log",
                        concurrency=concurrency,
                        hostname=f"bench{number}@%h",
                        extra=extra,
                    )
                    self._hold(worker)
                    started.append(worker)
            for worker in started:
                worker.wait_ready()
                progress(f"{self.name}: worker pid {worker.pid} ready")
            yield started
        finally:
            for worker in started:
                self._drop(worker)

    @contextlib.contextmanager
    def beat(self) -> Iterator[processes.CeleryProcess]:
        """Beat with this variant's environment (and schedule file), always stopped."""
        started: list[processes.CeleryProcess] = []
        try:
            with registering():
                started.append(processes.beat(self.env, self.data_dir / "logs" / "beat.log"))
                self._hold(started[0])
            yield started[0].wait_ready()
        finally:
            for process in started:
                self._drop(process)

    def _hold(self, process: processes.CeleryProcess) -> None:
        self.guard.tell("group", process.pid)

    def _drop(self, process: processes.CeleryProcess) -> None:
        process.stop()
        self.guard.tell("ended", process.pid)

    def client(self, module: str, **params: Any) -> JSONDict:
        """Run ``run.py --client MODULE`` with this variant's environment; its JSON output."""
        command = [sys.executable, str(RUNNER), "--client", module, "--params", json.dumps(params)]
        popen = None
        try:
            with registering():
                popen = subprocess.Popen(
                    command,
                    env=self.env,
                    cwd=self.data_dir,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
                self.guard.tell("group", popen.pid)
            stdout, stderr = popen.communicate(timeout=CLIENT_TIMEOUT_S)
        finally:
            if popen is not None:
                if popen.poll() is None:
                    os.killpg(popen.pid, signal.SIGKILL)
                    popen.wait()
                self.guard.tell("ended", popen.pid)
        if popen.returncode != 0:
            raise RuntimeError(
                f"client {module} ({self.name}) exited with {popen.returncode}:\n{stderr[-4000:]}"
            )
        lines = [line for line in stdout.splitlines() if line.strip()]
        figures: JSONDict = json.loads(lines[-1])
        figures["stderr_locked"] = stderr.count(LOCKED)
        return figures

    def locked_in_logs(self) -> int:
        """``database is locked`` in every log of this variant: workers (pool processes
        included, they write to their worker's log) and beat."""
        return sum(
            path.read_text(errors="replace").count(LOCKED)
            for path in (self.data_dir / "logs").glob("*.log")
        )

    def add_file(self, source: Path) -> Path:
        """``source`` inside this variant's data folder (imports read only from there)."""
        target = self.data_dir / source.name
        os.link(source, target)
        return target


@dataclass
class Bench:
    """One benchmark run: a vhost, a temporary folder, the guard, and the figures so far."""

    quick: bool
    root: Path
    broker_url: str
    guard: Guard
    figures: JSONDict = field(default_factory=lambda: {"ratios": {}, "spread": {}})
    notes: list[str] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)

    def variant(self, name: str, **settings: str) -> Variant:
        """A fresh data folder; inherited BATCHAPP_* variables never reach the children."""
        data_dir = self.root / name
        data_dir.mkdir(parents=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith("BATCHAPP_")}
        env |= {
            "BATCHAPP_BROKER_URL": self.broker_url,
            "BATCHAPP_DATA_DIR": str(data_dir),
            "BATCHAPP_DATABASE_URL": f"sqlite:///{data_dir / 'batchapp.sqlite'}",
            **settings,
        }
        variant = Variant(name, data_dir, env, self.guard)
        self.variants.append(variant)
        return variant

    def record(self, figures: JSONDict) -> None:
        """Add a measure's figures; its ``ratios`` and ``spread`` join the run's."""
        for key, value in figures.items():
            if key in ("ratios", "spread"):
                self.figures[key].update(value)
            else:
                self.figures[key] = value

    def sample(self, rows: int) -> Path:
        """A sales CSV of ``rows`` rows, written once per run and shared by the measures."""
        path = self.root / "samples" / f"sales-{rows}.csv"
        if not path.exists():
            progress(f"writing a {rows:,}-row sample")
            write_sample(path, rows)
        return path
