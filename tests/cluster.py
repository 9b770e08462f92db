"""A real RabbitMQ cluster for tests, made of the machine's own ``rabbitmq-server``.

Each node is a ``rabbitmq-server`` process with its own node name, AMQP and distribution ports,
config file, env file and data and log folders, all under one temporary folder owned by the
``rabbitmq`` user (the nodes run as that user when the tests run as root). The folder holds an
Erlang cookie of its own, so the cluster and the machine's own node on 5672 cannot talk to each
other: the machine's node is never stopped, joined or reconfigured. :func:`rabbitmq_cluster`
always stops every node and removes the folder, whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import AdminCommandError, admin_command

SBIN = Path("/usr/lib/rabbitmq/bin")
USER = "rabbitmq"
START_TIMEOUT = 90.0


class ClusterError(RuntimeError):
    """A node did not start, stop or join; the message has the command's output or log tail."""


def _executable(name: str) -> str:
    # The Debian wrappers in /usr/sbin `su` to rabbitmq and reset HOME (so the cookie) and cwd.
    direct = SBIN / name
    if direct.exists():
        return str(direct)
    found = shutil.which(name)
    if found is None:
        raise ClusterError(f"{name} is not installed (apt-get install rabbitmq-server)")
    return found


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (all held open while they are picked)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


@dataclass
class Node:
    """One cluster member: ``name`` is its Erlang node name, ``port`` its AMQP port."""

    name: str
    port: int
    dist_port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None

    def url(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        logs = [*sorted((self.home / "log").glob("*.log")), self.home / "stdout.log"]
        text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class RabbitCluster:
    """Nodes of one cluster; node 0 is the one the others join."""

    root: Path
    nodes: list[Node]
    _run_as: dict[str, object] = field(default_factory=dict)

    @classmethod
    def create(cls, size: int = 3) -> RabbitCluster:
        root = Path(tempfile.mkdtemp(prefix="batchapp-cluster-"))
        tag = uuid.uuid4().hex[:6]
        ports = _free_ports(2 * size)  # an AMQP and an Erlang distribution port per node
        nodes = [
            Node(
                f"batchapp-{tag}-{i + 1}@localhost",
                ports[2 * i],
                ports[2 * i + 1],
                root / f"n{i + 1}",
            )
            for i in range(size)
        ]
        cluster = cls(root, nodes)
        cluster._write_files()
        return cluster

    def _write_files(self) -> None:
        cookie = self.root / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        for node in self.nodes:
            (node.home / "log").mkdir(parents=True)
            (node.home / "rabbitmq.conf").write_text(
                f"listeners.tcp.local = 127.0.0.1:{node.port}\n"
            )
            (node.home / "enabled_plugins").write_text("[].\n")
            # Its own env file, so /etc/rabbitmq/rabbitmq-env.conf's NODENAME does not apply.
            (node.home / "rabbitmq-env.conf").write_text("")
        if os.geteuid() == 0:
            account = pwd.getpwnam(USER)
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _env(self, node: Node | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            # Erlang and the CLI read the cookie from $HOME/.erlang.cookie.
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        if node is not None:
            env |= {
                "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_NODE_PORT": str(node.port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_CONF_ENV_FILE": str(node.home / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(node.home / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.home / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.home / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(node.home / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node.home / "log"),
                "RABBITMQ_PID_FILE": str(node.home / "rabbitmq.pid"),
                "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }
        return env

    def ctl(self, node: Node, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n NODE ARGS``; raises :class:`ClusterError` with one line naming it
        (also when it does not answer in ``timeout`` seconds)."""
        try:
            return admin_command(
                ["rabbitmqctl", "-q", "-n", node.name, *args],
                timeout=timeout,
                executable=_executable("rabbitmqctl"),
                env=self._env(),
                cwd=self.root,
                **self._run_as,
            )
        except AdminCommandError as exc:
            raise ClusterError(str(exc)) from None

    def start_node(self, node: Node) -> None:
        """Start the node's OS process (a stopped member rejoins its cluster on its own)."""
        with (node.home / "stdout.log").open("ab") as log:
            node.process = subprocess.Popen(
                [_executable("rabbitmq-server")],
                env=self._env(node),
                cwd=node.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._run_as,  # type: ignore[call-overload]
            )

    def await_node(self, node: Node, timeout: float = START_TIMEOUT) -> None:
        """Wait until the node runs RabbitMQ; ping first (await_startup fails at once on a
        node that has not registered with epmd yet)."""
        deadline = time.monotonic() + timeout
        while True:
            if not node.running:
                raise ClusterError(f"{node.name} exited while starting:\n{node.log_tail()}")
            try:
                self.ctl(node, "ping", "--timeout", "5", timeout=15)
                break
            except ClusterError:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{node.name} did not answer ping within {timeout:g} s:\n{node.log_tail()}"
                    ) from None
                time.sleep(0.5)
        remaining = max(deadline - time.monotonic(), 5.0)
        self.ctl(node, "await_startup", "--timeout", str(int(remaining)), timeout=remaining + 15)

    def stop_node(self, node: Node, timeout: float = 60.0) -> None:
        """Stop the node gracefully (``rabbitmqctl stop``), as an operator or a reboot would."""
        if not node.running:
            return
        assert node.process is not None
        self.ctl(node, "stop", timeout=timeout)
        node.process.wait(timeout)

    def kill_node(self, node: Node) -> None:
        """SIGKILL the node's whole process group, as a host that vanished."""
        if node.process is not None and node.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait()

    def form(self) -> None:
        """Start all nodes at once, then join each to node 0 (stop_app, join_cluster, start_app)."""
        for node in self.nodes:
            self.start_node(node)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self.await_node, self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app", timeout=START_TIMEOUT)
        running = self.running_nodes(first)
        if running != {node.name for node in self.nodes}:
            raise ClusterError(f"cluster formed with {sorted(running)} only")

    def running_nodes(self, via: Node) -> set[str]:
        """The members ``via`` sees running."""
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def add_vhost(self) -> str:
        """A fresh vhost on the cluster, with guest allowed everything; returns its name."""
        name = f"batchapp-test-p{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.ctl(self.nodes[0], "add_vhost", name)
        self.ctl(self.nodes[0], "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return name

    def broker_url(self, vhost: str) -> str:
        """All members' URLs, ``;``-separated: kombu's failover list, node 0 first."""
        return ";".join(node.url(vhost) for node in self.nodes)

    def close(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove the folder."""
        for node in self.nodes:
            if node.running:
                assert node.process is not None
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGTERM)
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(30)
                # A node that ignored SIGTERM (or the script around it) goes now.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def rabbitmq_cluster(size: int = 3) -> Iterator[RabbitCluster]:
    """A formed cluster of ``size`` nodes, always stopped and removed afterwards (also when
    the test run itself is terminated)."""
    cluster = RabbitCluster.create(size)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        cluster.form()
        yield cluster
    finally:
        cluster.close()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Python's default for SIGTERM skips every `finally`, so three nodes would outlive the run.
    raise SystemExit(128 + signum)
