"""Admin commands against the real broker and server: timeouts and errors in one line, the
stale-vhost sweep, and what one suite vhost costs RabbitMQ."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.cluster import ClusterError, RabbitCluster
from tests.support import (
    AdminCommandError,
    BrokerUnreachable,
    postgres_admin,
    rabbitmqctl,
    require_broker,
    sweep_stale_vhosts,
)

FOOTPRINT = Path(__file__).resolve().parents[2] / "benchmarks" / "broker_footprint.py"


def test_a_broker_that_accepts_tcp_but_never_answers_fails_the_check_in_its_timeout() -> None:
    # The kernel completes the TCP handshake for a listening socket nobody accepts from.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}//"
        started = time.monotonic()
        with pytest.raises(BrokerUnreachable, match=r"\(timed out\)"):
            require_broker(url, timeout=1)
    assert time.monotonic() - started < 10


def test_a_postgres_statement_past_its_timeout_fails_with_one_line_naming_it() -> None:
    with pytest.raises(AdminCommandError) as raised:
        postgres_admin("SELECT pg_sleep(10)", timeout=1)
    assert str(raised.value) == (
        "postgres SELECT pg_sleep(10): canceling statement due to statement timeout"
    )


def test_a_failing_postgres_statement_names_it_and_the_servers_reason() -> None:
    name = f"batchapp_test_missing_{uuid.uuid4().hex[:8]}"
    with pytest.raises(AdminCommandError) as raised:
        postgres_admin(f'DROP DATABASE "{name}"')
    assert str(raised.value) == f'postgres DROP DATABASE "{name}": database "{name}" does not exist'


def test_a_postgres_server_that_is_not_there_is_named_in_one_line() -> None:
    with pytest.raises(AdminCommandError) as raised:
        postgres_admin("SELECT 1", url="postgresql://postgres@127.0.0.1:1/postgres", timeout=5)
    assert str(raised.value).startswith("postgres SELECT 1: ")
    assert "\n" not in str(raised.value)


def test_a_rabbitmqctl_error_names_the_command() -> None:
    name = f"batchapp-test-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(AdminCommandError, match=rf"^rabbitmqctl delete_vhost {name}: exit \d+: "):
        rabbitmqctl("delete_vhost", name)


def test_the_sweep_deletes_a_dead_runs_vhost_and_keeps_a_live_ones() -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = f"batchapp-test-p{ended.pid}-{uuid.uuid4().hex[:8]}"
    alive = f"batchapp-test-p{os.getpid()}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", dead)
    rabbitmqctl("add_vhost", alive)
    try:
        swept = sweep_stale_vhosts()
        listed = rabbitmqctl("list_vhosts", "name", "--no-table-headers").split()
        assert dead in swept and dead not in listed
        assert alive not in swept and alive in listed
    finally:
        rabbitmqctl("delete_vhost", alive)
        if dead not in swept:
            rabbitmqctl("delete_vhost", dead)


def test_the_sweep_stops_what_a_dead_run_left_running_on_its_vhost() -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = f"batchapp-test-p{ended.pid}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", dead)
    # Stands in for a worker of the killed run: the vhost's URL in its environment.
    env = {**os.environ, "BATCHAPP_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{dead}"}
    orphan = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        assert dead in sweep_stale_vhosts()
        assert orphan.wait(timeout=30) == -signal.SIGTERM
        assert bystander.poll() is None
    finally:
        for process in (orphan, bystander):
            process.kill()
            process.wait()


def test_a_suite_vhost_holds_the_task_queues_and_on_quorum_celerys_28_delay_queues() -> None:
    done = subprocess.run(
        [sys.executable, str(FOOTPRINT), "--vhosts", "1", "--queue-type", "quorum", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = {result["queue_type"]: result for result in json.loads(done.stdout)}
    # batchapp.calls, .chunks, .periodic, batchapp.dead, and celery_delayed_0..27 on quorum.
    assert figures["quorum"]["queues_per_vhost"] == [32]
    listed = rabbitmqctl("list_vhosts", "name", "--no-table-headers").split()
    assert not [name for name in listed if name.startswith("batchapp-footprint-")]


def test_a_cluster_nodes_rabbitmqctl_fails_with_one_line_naming_the_node() -> None:
    # The cluster's files only: no node is started, the machine's node is never involved.
    cluster = RabbitCluster.create(1)
    node = cluster.nodes[0].name
    try:
        with pytest.raises(ClusterError) as failed:
            cluster.ctl(cluster.nodes[0], "ping", "--timeout", "2", timeout=60)
    finally:
        cluster.close()
    assert re.fullmatch(rf"rabbitmqctl -n {node} ping --timeout 2: exit \d+: .+", str(failed.value))
