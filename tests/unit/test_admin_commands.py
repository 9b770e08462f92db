"""Admin commands (rabbitmqctl, PostgreSQL admin) fail with one line naming them, and the
stale-vhost sweep only takes vhosts whose run is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import support
from tests.support import AdminCommandError, admin_command, stale_vhosts


def test_a_command_that_does_not_answer_fails_with_one_line_naming_it() -> None:
    started = time.monotonic()
    with pytest.raises(AdminCommandError) as raised:
        admin_command(["sleep", "5"], timeout=0.1)
    assert str(raised.value) == "sleep 5: no answer in 0.1 s"
    assert time.monotonic() - started < 4


def test_a_timed_out_command_leaves_no_process_behind(tmp_path: Path) -> None:
    # A shell whose child (the real work, as rabbitmqctl's Erlang VM) outlives a kill of it alone.
    with pytest.raises(AdminCommandError):
        admin_command(["sh", "-c", "sleep 30 & echo $! > pid; wait"], timeout=1, cwd=tmp_path)
    child = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(child):
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_failing_command_gives_its_exit_status_and_last_error_line() -> None:
    command = [sys.executable, "-c", "import sys; sys.exit('Error:\\nvhost x does not exist')"]
    with pytest.raises(AdminCommandError) as raised:
        admin_command(command)
    assert str(raised.value).endswith(": exit 1: vhost x does not exist")
    assert "\n" not in str(raised.value)


def test_rabbitmqctls_quiet_flag_is_left_out_of_the_message() -> None:
    with pytest.raises(AdminCommandError) as raised:
        admin_command(["false", "-q", "add_vhost", "v"])
    assert str(raised.value) == "false add_vhost v: exit 1"


def test_a_command_that_is_not_installed_is_named() -> None:
    with pytest.raises(AdminCommandError, match=r"^no-such-ctl list_vhosts: cannot start: "):
        admin_command(["no-such-ctl", "list_vhosts"])


def test_a_command_that_answers_returns_its_output() -> None:
    assert admin_command(["echo", "ok"]) == "ok\n"


def test_only_suite_vhosts_of_dead_processes_are_stale() -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead, alive = ended.pid, os.getpid()
    names = [
        f"batchapp-test-p{dead}-0123abcd",
        f"batchapp-bench-p{dead}-89abcdef",
        f"batchapp-peers-celery_rpc-p{dead}-89abcdef",
        f"batchapp-test-p{alive}-0123abcd",
        "batchapp-test-0123abcd",  # an older run's name: no pid, whose it is cannot be told
        f"someone-else-p{dead}-0123abcd",
        "/",
    ]
    assert stale_vhosts(names) == names[:3]


def test_a_process_holding_too_many_vhosts_is_refused_before_the_broker_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = {f"batchapp-test-p1-{n:08x}" for n in range(support.MAX_VHOSTS_PER_PROCESS)}
    monkeypatch.setattr(support, "live_vhosts", held)
    asked: list[tuple[str, ...]] = []
    monkeypatch.setattr(support, "rabbitmqctl", lambda *args, **kw: asked.append(args))
    most = support.MAX_VHOSTS_PER_PROCESS
    refused = pytest.raises(RuntimeError, match=rf"already holds {most} vhosts \(at most {most}\)")
    with refused, support.rabbitmq_vhost("batchapp-leak"):
        pass
    assert asked == []
