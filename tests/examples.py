"""The example projects under ``examples/``, installed into the running venv as a user would
(``pip install -e``), so their ``batchapp.jobs`` entry points are registered for every worker
and CLI the tests start."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDCOUNT = ROOT / "examples" / "wordcount"


def install_example(project: Path, package: str) -> None:
    """``pip install -e project --no-deps`` unless ``package`` already comes from it.

    pip's build backend (setuptools) comes from the package index into a build environment of
    its own, as it did for batchapp itself; a second call finds the package and does nothing.
    """
    source = project / "src"
    if not _installed_from(package, source):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(project)],
            # The test run's warnings-as-errors are for batchapp's processes, not pip's.
            env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pip install -e {project} failed:\n{done.stderr[-3000:]}")
        # The .pth file pip wrote is read at interpreter start; this process adds its path now,
        # so discovery here (batchapp.celery, imported later) can load the entry point too.
        importlib.invalidate_caches()
        if str(source) not in sys.path:
            sys.path.append(str(source))
    if not _installed_from(package, source):
        raise RuntimeError(f"{package} is not importable from {source} after pip install -e")


def _installed_from(package: str, source: Path) -> bool:
    """``package`` imports from ``source`` and declares its entry point (not a stale copy)."""
    spec = importlib.util.find_spec(package)
    declared = any(
        point.value.split(":")[0].split(".")[0] == package
        for point in entry_points(group="batchapp.jobs")
    )
    return (
        declared
        and spec is not None
        and spec.origin is not None
        and Path(spec.origin).resolve().is_relative_to(source)
    )
