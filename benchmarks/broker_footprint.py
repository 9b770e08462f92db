"""What one test vhost costs RabbitMQ: queues, Erlang processes, open files and memory.

    python benchmarks/broker_footprint.py [--vhosts N] [--queue-type quorum|classic|both] [--json]

For each queue type, makes N vhosts of its own and starts (then stops) a worker on each, as the
suite does on its vhost, so RabbitMQ holds exactly what a worker declares: the task queues,
``batchapp.dead`` and, on quorum queues, the 28 ``celery_delayed_*`` queues of Celery's native
delayed delivery. It reads the node's figures before, with the vhosts, and after deleting them;
the figures per vhost are the differences divided by N. Other processes on the broker move the
figures too: on a shared machine they are provisional.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from batchapp.cli import processes  # noqa: E402
from tests.support import (  # noqa: E402
    admin_command,
    rabbitmq_vhost,
    rabbitmqctl,
    sweep_stale_vhosts,
)

JSONDict = dict[str, Any]
MB = 1024 * 1024


def node_figures() -> JSONDict:
    """The node's queues, vhosts, Erlang processes, open files and memory now."""
    status = json.loads(rabbitmqctl("status", "--formatter", "json"))
    breakdown = json.loads(
        admin_command(["rabbitmq-diagnostics", "-q", "memory_breakdown", "--formatter", "json"])
    )
    return {
        "vhosts": status["totals"]["virtual_host_count"],
        "queues": status["totals"]["queue_count"],
        "erlang_processes": status["processes"]["used"],
        "open_files": _open_files(int(status["pid"])),
        "memory_mb": status["memory"]["total"]["erlang"] / MB,
        "quorum_ets_mb": breakdown.get("quorum_ets", {}).get("bytes", 0) / MB,
        "file_limit": status["file_descriptors"]["total_limit"],
    }


def _open_files(pid: int) -> int | None:
    """Descriptors the node's process holds (None if /proc does not let us count them)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def vhost_queues(vhost: str) -> list[JSONDict]:
    """The vhost's queues with the memory of each queue's processes, in bytes."""
    listed = rabbitmqctl("list_queues", "-p", vhost, "name", "memory", "--formatter", "json")
    return list(json.loads(listed))


def measure(queue_type: str, count: int, root: Path) -> JSONDict:
    """Figures of ``count`` vhosts of ``queue_type`` queues, each declared by a worker."""
    before = node_figures()
    timings: dict[str, list[float]] = {"add_vhost_s": [], "worker_ready_s": []}
    queues: list[int] = []
    queue_memory: list[float] = []
    with contextlib.ExitStack() as stack:
        for number in range(count):
            started = time.monotonic()
            url = stack.enter_context(rabbitmq_vhost(f"batchapp-footprint-{queue_type}"))
            timings["add_vhost_s"].append(time.monotonic() - started)
            env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHAPP_")}
            env |= {
                "BATCHAPP_BROKER_URL": url,
                "BATCHAPP_QUEUE_TYPE": queue_type,
                "BATCHAPP_DATA_DIR": str(root / f"{queue_type}{number}"),
            }
            started = time.monotonic()
            log = root / "logs" / f"{queue_type}{number}.log"
            with processes.worker(env, log, concurrency=1, hostname=f"footprint{number}@%h") as w:
                w.wait_ready(timeout=120)
                timings["worker_ready_s"].append(time.monotonic() - started)
            listed = vhost_queues(url.rsplit("/", 1)[1])
            queues.append(len(listed))
            queue_memory.append(sum(queue["memory"] for queue in listed) / MB)
        held = node_figures()
        started = time.monotonic()
        stack.close()  # deletes the vhosts
        timings["delete_vhost_s"] = [(time.monotonic() - started) / count]
    after = node_figures()
    per_vhost = {
        key: round((held[key] - before[key]) / count, 2)
        for key in ("queues", "erlang_processes", "open_files", "memory_mb", "quorum_ets_mb")
        if held[key] is not None and before[key] is not None
    }
    return {
        "queue_type": queue_type,
        "vhosts": count,
        "queues_per_vhost": queues,
        "queue_memory_mb_per_vhost": [round(mb, 2) for mb in queue_memory],
        "per_vhost": per_vhost,
        "node_before": before,
        "node_with_vhosts": held,
        "node_after": after,
        "seconds": {key: round(max(values), 2) for key, values in timings.items() if values},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vhosts", type=int, default=1)
    parser.add_argument("--queue-type", choices=("quorum", "classic", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    if not 1 <= args.vhosts <= 20:
        parser.error(f"--vhosts: expected 1 to 20, got {args.vhosts}")
    sweep_stale_vhosts()
    types = ("quorum", "classic") if args.queue_type == "both" else (args.queue_type,)
    with tempfile.TemporaryDirectory(prefix="batchapp-footprint-") as folder:
        results = [measure(queue_type, args.vhosts, Path(folder)) for queue_type in types]
    if args.json:
        print(json.dumps(results))
        return 0
    for result in results:
        per = result["per_vhost"]
        print(
            f"{result['queue_type']}: {result['queues_per_vhost'][0]} queues per vhost "
            f"({max(result['queue_memory_mb_per_vhost'])} MB in their processes); "
            f"per vhost +{per.get('erlang_processes')} Erlang processes, "
            f"+{per.get('open_files')} open files, +{per.get('memory_mb')} MB "
            f"(quorum_ets +{per.get('quorum_ets_mb')} MB); "
            f"node file limit {result['node_before']['file_limit']}; "
            f"slowest add {result['seconds']['add_vhost_s']} s, "
            f"worker ready {result['seconds']['worker_ready_s']} s, "
            f"delete {result['seconds']['delete_vhost_s']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
