"""The benchmark runner's backstop: cleans up after a runner that died without doing so.

Started by the runner with a pipe on stdin, in a session of its own. Lines on the pipe:
``group PGID`` (a process group the run started), ``ended PGID`` (stopped by the runner),
``vhost NAME``, ``folder PATH`` and ``done`` (the runner cleaned up itself). When the pipe
closes without ``done`` (the runner was SIGKILLed, say by a timeout), the guard stops the
groups still running and every process whose environment names the run's vhost (one the
runner started but had no time to register), with SIGTERM and then SIGKILL, deletes the vhost
and removes the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time

from tests.support import AdminCommandError, processes_on, rabbitmqctl

GRACE_S = 20.0


def main() -> int:
    groups: set[int] = set()
    vhosts: list[str] = []
    folders: list[str] = []
    for line in sys.stdin:
        kind, _, value = line.rstrip("\n").partition(" ")
        if kind == "done":
            return 0
        if kind == "group":
            groups.add(int(value))
        elif kind == "ended":
            groups.discard(int(value))
        elif kind == "vhost":
            vhosts.append(value)
        elif kind == "folder":
            folders.append(value)
    stop(groups, vhosts)
    for vhost in vhosts:
        try:
            rabbitmqctl("delete_vhost", vhost)
        except AdminCommandError as exc:
            print(f"guard: {exc}", file=sys.stderr)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def stop(groups: set[int], vhosts: list[str]) -> None:
    """SIGTERM (a worker's warm shutdown), then SIGKILL whatever is left after the grace."""
    for group in groups:
        signal_group(group, signal.SIGTERM)
    for pid in processes_on(vhosts):
        signal_process(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and (
        any(signal_group(g, 0) for g in groups) or processes_on(vhosts)
    ):
        time.sleep(0.1)
    for group in groups:
        signal_group(group, signal.SIGKILL)
    for pid in processes_on(vhosts):
        signal_process(pid, signal.SIGKILL)


def signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def signal_group(group: int, signum: int) -> bool:
    """Signal a process group; False once no process of it is left."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours (the id was reused): leave it alone
    return True


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
