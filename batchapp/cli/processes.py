"""Start and stop ``celery -A batchapp worker|beat`` processes (for the demo, tests, benchmarks).

Each process logs to a file; :meth:`CeleryProcess.wait_for_log` polls it for a line, and
:meth:`CeleryProcess.stop` always ends the whole process group, whatever state it is in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType


class ProcessFailed(RuntimeError):
    """A celery process exited or did not get ready in time; the message has its log's tail."""


class CeleryProcess:
    """One ``celery -A batchapp <command>`` process in its own process group."""

    def __init__(
        self,
        command: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.command = command
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "batchapp", command, *args],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        """Poll the log until ``text`` appears ``count`` times."""
        deadline = time.monotonic() + timeout
        while True:
            if self.log().count(text) >= count:
                return
            if self.popen.poll() is not None:
                raise ProcessFailed(
                    f"celery {self.command} exited with {self.popen.returncode} before "
                    f"logging {text!r}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"celery {self.command} did not log {text!r} within {timeout:g} s:\n"
                    f"{self.tail()}"
                )
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 60.0) -> CeleryProcess:
        marker = " ready." if self.command == "worker" else "beat: Starting..."
        self.wait_for_log(marker, timeout)
        return self

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)

    def kill_main(self) -> None:
        """SIGKILL the main process only, as a crash would (its pool children die with it)."""
        if self.popen.poll() is None:
            self.popen.kill()

    def stop(self, timeout: float = 30.0) -> int:
        """Warm shutdown (SIGTERM), then SIGKILL for the whole group if it hangs."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait()
        # Pool children that outlived their parent would keep consuming.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()
        return self.popen.returncode

    def __enter__(self) -> CeleryProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def worker(
    env: Mapping[str, str],
    log_path: Path,
    *,
    concurrency: int = 2,
    hostname: str = "worker1@%h",
    extra: Sequence[str] = (),
) -> CeleryProcess:
    """A prefork worker without mingle/gossip (no start-up round with its neighbours)."""
    args = [
        "-l",
        "INFO",
        "-c",
        str(concurrency),
        "-n",
        hostname,
        "--without-mingle",
        "--without-gossip",
        *extra,
    ]
    return CeleryProcess("worker", args, env, log_path)


def beat(env: Mapping[str, str], log_path: Path) -> CeleryProcess:
    return CeleryProcess("beat", ["-l", "INFO"], env, log_path)
