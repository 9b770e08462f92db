"""CPU time spent by groups of processes between two readings of /proc, for ``peers.py``.

A reading takes every process's utime+stime+cutime+cstime from ``/proc/<pid>/stat`` in one pass,
then sorts the processes into named groups (a worker and all its descendants, the server that
listens on a port, ...) chosen afresh at each reading, so a pool process forked in between
counts. A child that ended in between is counted through its parent's cutime/cstime once the
parent reaps it; a process that ended with nobody in its group to reap it (a worker that died,
RabbitMQ restarted) is a gap: its CPU since the first reading is missing, and ``used`` says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    name: str
    started: int  # clock ticks after boot: tells a reused pid apart
    ticks: int  # its own CPU and that of the children it reaped


Snapshot = Mapping[int, Proc]
# Picks a group's pids out of a snapshot of every process.
Selector = Callable[[Snapshot], set[int]]


def read_proc(pid: int) -> Proc | None:
    """One process's stat line, or None if it has gone."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name may hold spaces and parentheses: the fields proper start after the last ')'.
    head, _, tail = line.rpartition(")")
    fields = tail.split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        name=head.partition("(")[2],
        started=int(fields[19]),
        ticks=utime + stime + cutime + cstime,
    )


def snapshot() -> dict[int, Proc]:
    """Every process on the machine, in one pass over /proc."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (proc := read_proc(int(entry.name))) is not None:
            found[proc.pid] = proc
    return found


def descendants(procs: Snapshot, roots: Collection[int]) -> set[int]:
    """Every process below ``roots`` (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: set[int] = set()
    pending = list(roots)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def exactly(pids: Collection[int]) -> Selector:
    return lambda procs: {pid for pid in pids if pid in procs}


def below(roots: Collection[int]) -> Selector:
    return lambda procs: descendants(procs, roots)


def tree(roots: Collection[int]) -> Selector:
    return lambda procs: exactly(roots)(procs) | descendants(procs, roots)


def listening_sockets(port: int) -> set[str]:
    """The ``socket:[inode]`` links of every TCP socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                # 0A is LISTEN; the local address ends with the port in hex.
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    found.add(f"socket:[{fields[9]}]")
    return found


def serving(name: str, port: int) -> list[int]:
    """The processes called ``name`` that listen on ``port``: a server, not a CLI of the same
    program (rabbitmqctl runs on a beam.smp too) nor another node of it on the machine."""
    sockets = listening_sockets(port)
    procs = snapshot().values()
    return [proc.pid for proc in procs if proc.name == name and open_files(proc.pid) & sockets]


def open_files(pid: int) -> set[str]:
    """What the process's file descriptors point at (those still open while read)."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                found.add(os.readlink(fd.path))
    return found


@dataclass(frozen=True)
class Reading:
    groups: dict[str, dict[int, Proc]]


def read(selectors: Mapping[str, Selector], own_first: bool = False) -> Reading:
    """Each group's processes now. This process's own figure is read last, or first with
    ``own_first`` (at the end of a timed section), so the pass over /proc is not charged to it."""
    own = read_proc(os.getpid()) if own_first else None
    procs = snapshot()
    own = own or read_proc(os.getpid())
    if own is not None:
        procs[own.pid] = own
    return Reading({group: {p: procs[p] for p in pick(procs)} for group, pick in selectors.items()})


@dataclass
class Usage:
    ms: dict[str, float]
    gaps: list[str] = field(default_factory=list)


def used(before: Reading, after: Reading) -> Usage:
    """CPU milliseconds each group spent between two readings, and the gaps in those figures."""
    usage = Usage({})
    for group, then in before.groups.items():
        now = after.groups.get(group, {})
        ticks = sum(proc.ticks for proc in now.values())
        for proc in then.values():
            if same(now.get(proc.pid), proc) or same(now.get(proc.ppid), then.get(proc.ppid)):
                # Still there, or its parent in the group has (or will have) its ticks.
                ticks -= proc.ticks
            else:
                usage.gaps.append(f"{group}: {proc.name} (pid {proc.pid}) ended uncounted")
        usage.ms[group] = ticks * TICK_MS
    return usage


def same(now: Proc | None, then: Proc | None) -> bool:
    return now is not None and then is not None and now.started == then.started
