"""A forked child (a pool process) never uses its parent's engines, connections or windows."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

from batchapp.broker import confirms
from batchapp.storage.engines import engine_for


def in_child(probe: Callable[[], Any]) -> Any:
    """``probe()`` run in a forked child; its JSON result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's exit handlers
        try:
            os.write(write, json.dumps(probe()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(answer)


def test_a_child_makes_its_own_engine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    parent = engine_for(url)
    assert engine_for(url) is parent
    assert in_child(lambda: engine_for(url) is not parent) is True
    assert engine_for(url) is parent


def test_a_child_makes_its_own_confirm_window() -> None:
    app = Celery("fork", broker="memory://", set_as_current=False)
    parent = confirms.window_for(app, 1.0)
    assert confirms.pending_window(app) is parent
    child = in_child(
        lambda: [
            confirms.pending_window(app) is None,
            confirms.window_for(app, 1.0) is not parent,
        ]
    )
    assert child == [True, True]
    assert confirms.pending_window(app) is parent
