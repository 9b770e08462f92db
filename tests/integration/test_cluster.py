"""Scale-out faults on a real 3-node RabbitMQ cluster with quorum queues and PostgreSQL.

Two workers get the three nodes as kombu's ``;``-separated failover list; ledger and results
are in PostgreSQL. The broker node the workers use is stopped mid-job, comes back mid-job, and
is SIGKILLed mid-job, and a whole worker host is killed mid-job; each test counts, from the
ledger's rows and the workers' logs, that the job's sum is exact and no chunk took effect twice,
and prints the figures it measured (``pytest -s tests/integration/test_cluster.py``; the README's
Scaling-out table quotes them). The cluster starts once for the module.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from batchapp import ledger
from batchapp.broker import queues
from batchapp.cli import processes
from batchapp.cli.processes import CeleryProcess
from batchapp.jobs import JobContext
from batchapp.storage.tables import chunks
from batchapp.sums import sum_to
from batchapp.tasks import calculate_sum
from tests.cluster import RabbitCluster, rabbitmq_cluster
from tests.integration.conftest import RESULT_TIMEOUT, RUN_DATA_DIR, Stack
from tests.support import run_cli, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
WAIT = 120.0
# The job: 3,000 chunks, enough to be mid-way when a node stops.
CHUNKS, CHUNK_SIZE = 3_000, 1_000
DONE_LINE = re.compile(r"job (\w+) chunk (\d+) done:")
TICK, TICK_FAILED = "Sending due task calculate-sum", "Couldn't apply scheduled task"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    with rabbitmq_cluster(3) as formed:
        yield formed


@pytest.fixture(scope="module")
def vhost(cluster: RabbitCluster) -> str:
    return cluster.add_vhost()


@pytest.fixture(scope="module")
def cluster_stack(cluster: RabbitCluster, vhost: str, postgres_url: str) -> Iterator[Stack]:
    """Workers and callers on the cluster (all three URLs), ledger and results in PostgreSQL."""
    env = {
        **os.environ,
        "BATCHAPP_BROKER_URL": cluster.broker_url(vhost),
        "BATCHAPP_QUEUE_TYPE": "quorum",
        "BATCHAPP_DATABASE_URL": postgres_url,
        "BATCHAPP_RESULT_BACKEND": f"db+{postgres_url}",
    }
    stack = Stack("cluster", postgres_url, env)
    try:
        yield stack
    finally:
        stack.stop_all()


def submit_sum(stack: Stack, count: int = CHUNKS) -> str:
    """``batchapp submit parallel_sum`` as a user runs it; returns the job id."""
    done = run_cli(
        "submit", "parallel_sum", f"n={count * CHUNK_SIZE}", f"chunk_size={CHUNK_SIZE}",
        "--json", env=stack.env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id: str = json.loads(done.stdout)["id"]
    return job_id


def start_caller(env: dict[str, str], seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cluster_caller", str(seconds)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def caller_outcome(caller: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = caller.communicate(timeout=WAIT)
    assert caller.returncode == 0, err[-3000:]
    outcome: dict[str, Any] = json.loads(out)
    return outcome


def chunk_statuses(ctx: JobContext, job_id: str) -> Counter[str]:
    with ctx.engine.connect() as connection:
        rows = connection.execute(
            select(chunks.c.status, func.count())
            .where(chunks.c.job_id == job_id)
            .group_by(chunks.c.status)
        )
        return Counter({status: int(count) for status, count in rows})


@dataclass(frozen=True)
class Effects:
    """What became of a job's chunk messages, counted from the workers' logs and the ledger."""

    commits: Counter[int]  # chunk index -> times its output was committed
    dropped: int  # deliveries of a chunk already done, dropped by the ledger
    redelivered: int  # chunks whose committing delivery was a redelivery


def effects(stack: Stack, job_id: str) -> Effects:
    logs = "".join(process.log() for process in stack.started)
    return Effects(
        commits=Counter(int(index) for job, index in DONE_LINE.findall(logs) if job == job_id),
        dropped=len(re.findall(rf"job {job_id} chunk \d+ was (?:already )?done", logs)),
        redelivered=sum(row.redelivered for row in ledger.chunk_rows(stack.ctx, job_id)),
    )


def assert_exact(
    stack: Stack, job_id: str, count: int = CHUNKS, *, worker_killed: bool = False
) -> ledger.JobView:
    """The job succeeded with the exact sum, its counters equal its chunk rows, and every
    chunk took effect exactly once (a killed worker may not have logged its last commit)."""
    view = ledger.wait(stack.ctx, job_id, timeout=WAIT)
    statuses = chunk_statuses(stack.ctx, job_id)
    commits = effects(stack, job_id).commits
    attempts = Counter(row.attempts for row in ledger.chunk_rows(stack.ctx, job_id))
    assert view.status == "succeeded", view.error
    assert view.result == sum_to(count * CHUNK_SIZE)
    assert (view.chunks_done, view.chunks_failed) == (statuses["done"], statuses["failed"])
    assert statuses == Counter(done=count)
    assert view.items_done == count * CHUNK_SIZE
    assert attempts == Counter({1: count})
    assert set(commits.values()) == {1}
    if not worker_killed:
        assert sorted(commits) == list(range(count))
    return view


def log_time(line: str) -> datetime:
    stamp = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
    assert stamp is not None, line
    return datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f")


def reconnect_seconds(worker: CeleryProcess, losses_before: int = 0) -> float:
    """From the worker's next 'Connection to broker lost' after ``losses_before`` of them to
    its next 'Connected to'."""
    lines = worker.log().splitlines()
    losses = [i for i, line in enumerate(lines) if "Connection to broker lost" in line]
    lost = losses[losses_before]
    back = next(line for line in lines[lost:] if "] Connected to amqp://" in line)
    return (log_time(back) - log_time(lines[lost])).total_seconds()


def longest_pause(ctx: JobContext, job_id: str) -> float:
    """The longest time between two consecutive chunk commits of the job, in seconds."""
    with ctx.engine.connect() as connection:
        times = list(
            connection.execute(
                select(chunks.c.finished_at)
                .where(chunks.c.job_id == job_id)
                .order_by(chunks.c.finished_at)
            ).scalars()
        )
    return max((b - a).total_seconds() for a, b in itertools.pairwise(times))


def two_workers(stack: Stack) -> list[CeleryProcess]:
    """The module's two running workers, started if needed."""

    def running() -> list[CeleryProcess]:
        return [p for p in stack.started if p.command == "worker" and p.popen.poll() is None]

    while len(running()) < 2:
        stack.worker(f"c{len(stack.started) + 1}")
    return running()


def durable_queue_types(cluster: RabbitCluster, vhost: str) -> dict[str, str]:
    """The type of each durable queue (the others are Celery's per-worker control queues)."""
    listed = cluster.ctl(
        cluster.nodes[1], "list_queues", "-p", vhost, "name", "type", "durable",
        "--formatter", "json",
    )  # fmt: skip
    return {queue["name"]: queue["type"] for queue in json.loads(listed) if queue["durable"]}


def connected_port(process: CeleryProcess, after: int = 0) -> int | None:
    """The broker port of the worker's latest 'Connected to' line after the first ``after``."""
    ports = re.findall(r"Connected to amqp://[^@]+@127\.0\.0\.1:(\d+)/", process.log())
    return int(ports[-1]) if len(ports) > after else None


def test_worker_outlasts_its_control_queue_held_by_the_connection_it_left(stack: Stack) -> None:
    """Right after a failover the node the worker left may still hold the worker's exclusive
    control queue; the worker retries (it used to die of RESOURCE_LOCKED) and then serves."""
    from kombu import Connection

    from batchapp.celery import app

    name = f"held{uuid.uuid4().hex[:6]}"
    queue = app.control.mailbox.get_queue(f"{name}@{socket.gethostname()}")
    with Connection(app.conf.broker_url) as holder:
        queue(holder.channel()).declare()
        worker = processes.worker(
            stack.env, RUN_DATA_DIR / "logs" / f"{name}.log", hostname=f"{name}@%h"
        )
        stack.started.append(worker)
        worker.wait_for_log("RESOURCE_LOCKED", timeout=WAIT, count=2)
    worker.wait_ready()

    print(f"\ncontrol queue held elsewhere: worker retried {worker.log().count('RESOURCE_LOCKED')}")
    assert calculate_sum.delay(10).get(timeout=RESULT_TIMEOUT) == 55


def test_workers_fail_over_when_their_broker_node_stops(
    cluster: RabbitCluster, vhost: str, cluster_stack: Stack
) -> None:
    stack = cluster_stack
    first = cluster.nodes[0]
    workers = two_workers(stack)
    beat = stack.beat(BATCHAPP_BEAT_INTERVAL="1")
    assert {connected_port(worker) for worker in workers} == {first.port}
    job_id = submit_sum(stack)
    caller = start_caller(stack.env, seconds=8)  # publishing before, during and after
    wait_until(
        lambda: ledger.get(stack.ctx, job_id).chunks_done >= CHUNKS // 5, "20% done", timeout=WAIT
    )

    at_stop = ledger.get(stack.ctx, job_id).chunks_done
    ticks_at_stop = beat.log().count(TICK)
    cluster.stop_node(first)
    for worker in workers:
        wait_until(
            lambda w=worker: connected_port(w, after=1) not in (None, first.port),
            "failover",
            timeout=WAIT,
        )
    view = assert_exact(stack, job_id)
    during = caller_outcome(caller)
    after = caller_outcome(start_caller(stack.env, seconds=1))
    wait_until(
        lambda: beat.log().count(TICK) >= ticks_at_stop + 3, "3 ticks after the stop", timeout=WAIT
    )
    beat_survived = beat.popen.poll() is None
    beat.stop()
    stack.started.remove(beat)

    seen = effects(stack, job_id)
    reconnects = [reconnect_seconds(worker) for worker in workers]
    pause = longest_pause(stack.ctx, job_id)
    print(
        f"\nbroker node stopped at {at_stop:,}/{CHUNKS:,} chunks: job {view.status}, "
        f"{view.chunks_done:,}/{CHUNKS:,} chunks, sum {view.result:,} (exact); workers "
        f"connected to another node {max(reconnects):.2f} s after losing theirs, longest pause "
        f"between chunk commits {pause:.2f} s; {seen.dropped} duplicate deliveries dropped, "
        f"{seen.redelivered} redelivered; calls during the outage: {during['published']} "
        f"published, {during['failed']} failed {during['errors']}, {during['right']} results "
        f"right; after: {after['right']}/{after['calls']} right; beat sent "
        f"{beat.log().count(TICK) - ticks_at_stop} ticks after the stop began, "
        f"{beat.log().count(TICK_FAILED)} failed"
    )
    assert all(worker.popen.poll() is None for worker in workers)
    assert beat_survived
    types = durable_queue_types(cluster, vhost)
    assert set(queues.ALL) <= set(types)
    assert set(types.values()) == {"quorum"}, types
    # Failing over never waited on the stopped node (Celery's own step retried it for 17 s).
    assert not any("Retrying delayed delivery" in worker.log() for worker in workers)
    assert pause < 10
    assert during["right"] == during["published"] > 0
    assert during["published"] + during["failed"] == during["calls"]
    for error in during["errors"]:
        assert re.match(r"kombu\.exceptions\.OperationalError: \S", error), error
    assert after["right"] == after["published"] == after["calls"] > 0


def test_stopped_node_rejoins_mid_job_and_nothing_takes_effect_twice(
    cluster: RabbitCluster, vhost: str, cluster_stack: Stack
) -> None:
    stack = cluster_stack
    first = cluster.nodes[0]
    if first.running:  # run alone: stop the node the workers use first
        two_workers(stack)
        cluster.stop_node(first)
    workers = two_workers(stack)
    count = CHUNKS // 2
    job_id = submit_sum(stack, count)
    # Early: the node takes seconds to start and catch up, all while chunks keep flowing.
    wait_until(
        lambda: ledger.get(stack.ctx, job_id).chunks_done >= count // 20, "5% done", timeout=WAIT
    )
    at_start = ledger.get(stack.ctx, job_id).chunks_done
    starting = time.monotonic()
    cluster.start_node(first)
    cluster.await_node(first)
    rejoined = time.monotonic()
    view = assert_exact(stack, job_id, count)
    # A caller given the rejoined node alone publishes and reads results through it.
    via_first = caller_outcome(
        start_caller(stack.env | {"BATCHAPP_BROKER_URL": first.url(vhost)}, 1)
    )

    seen = effects(stack, job_id)
    members = cluster.running_nodes(cluster.nodes[1])
    print(
        f"\nstopped node started again at {at_start:,}/{count:,} chunks: running again in "
        f"{rejoined - starting:.1f} s, cluster of {len(members)}; job {view.status}, sum "
        f"{view.result:,} (exact), {seen.commits.total():,} chunk commits for {count:,} "
        f"chunks, {seen.dropped} duplicate deliveries dropped, {seen.redelivered} redelivered; "
        f"caller on the rejoined node alone: {via_first['right']}/{via_first['calls']} right"
    )
    assert members == {node.name for node in cluster.nodes}
    assert all(worker.popen.poll() is None for worker in workers)
    assert via_first["right"] == via_first["published"] == via_first["calls"] > 0


def test_workers_fail_over_when_their_broker_node_crashes(
    cluster: RabbitCluster, cluster_stack: Stack
) -> None:
    stack = cluster_stack
    workers = two_workers(stack)
    for node in cluster.nodes:
        if not node.running:
            cluster.start_node(node)
            cluster.await_node(node)
    crashed = next(node for node in cluster.nodes if node.port == connected_port(workers[0]))
    on_it = [worker for worker in workers if connected_port(worker) == crashed.port]
    losses = {worker: worker.log().count("Connection to broker lost") for worker in on_it}
    count = CHUNKS // 3
    job_id = submit_sum(stack, count)
    wait_until(
        lambda: ledger.get(stack.ctx, job_id).chunks_done >= count // 5, "20% done", timeout=WAIT
    )
    at_crash = ledger.get(stack.ctx, job_id).chunks_done
    cluster.kill_node(crashed)  # SIGKILL: no goodbye to clients or to the other nodes
    for worker in on_it:
        wait_until(
            lambda w=worker: connected_port(w, after=losses[w] + 1) not in (None, crashed.port),
            "failover from the crashed node",
            timeout=WAIT,
        )
    view = assert_exact(stack, job_id, count)

    seen = effects(stack, job_id)
    reconnects = [reconnect_seconds(worker, losses[worker]) for worker in on_it]
    pause = longest_pause(stack.ctx, job_id)
    print(
        f"\nbroker node SIGKILLed at {at_crash:,}/{count:,} chunks: job {view.status}, sum "
        f"{view.result:,} (exact); {len(on_it)} worker(s) on it connected to another node "
        f"{max(reconnects):.2f} s after losing it, longest pause between chunk commits "
        f"{pause:.2f} s; {seen.dropped} duplicate deliveries dropped, {seen.redelivered} "
        f"redelivered"
    )
    assert all(worker.popen.poll() is None for worker in workers)
    assert pause < 30


def test_worker_host_killed_mid_job_and_the_other_worker_finishes_exactly(
    cluster_stack: Stack,
) -> None:
    stack = cluster_stack
    doomed, survivor = two_workers(stack)
    count = CHUNKS // 4  # one worker finishes it: a quarter of the job keeps it short
    job_id = submit_sum(stack, count)
    wait_until(
        lambda: (
            f"job {job_id} chunk" in doomed.log()
            and ledger.get(stack.ctx, job_id).chunks_done >= count // 5
        ),
        "20% done, some by the doomed worker",
        timeout=WAIT,
    )
    doomed.signal(signal.SIGKILL)  # the whole host: main process and pool children at once
    doomed.popen.wait()
    killed_at = ledger.get(stack.ctx, job_id).chunks_done
    view = assert_exact(stack, job_id, count, worker_killed=True)

    seen = effects(stack, job_id)
    by_doomed = sum(1 for job, _ in DONE_LINE.findall(doomed.log()) if job == job_id)
    print(
        f"\nworker host SIGKILLed at {killed_at:,}/{count:,} chunks ({by_doomed:,} its own): "
        f"job {view.status}, sum {view.result:,} (exact), chunks it held went to the other "
        f"worker: {seen.redelivered} redelivered and committed, {seen.dropped} already "
        f"committed and dropped"
    )
    assert survivor.popen.poll() is None
    assert seen.redelivered + seen.dropped >= 1
