"""Imports run one way: cli -> service -> tasks -> ledger and jobs -> storage."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "batchapp"

# What each part of the package may not import (a prefix names a module or a subpackage).
FORBIDDEN = {
    "batchapp.cli": ("batchapp.tasks", "batchapp.ledger", "batchapp.jobs", "batchapp.storage"),
    "batchapp.ledger": ("batchapp.cli", "batchapp.service", "batchapp.tasks", "batchapp.celery"),
    "batchapp.jobs": ("batchapp.cli", "batchapp.service", "batchapp.tasks", "batchapp.celery"),
    "batchapp.storage": ("batchapp.cli", "batchapp.service", "batchapp.tasks", "batchapp.ledger"),
    "batchapp.internals": ("batchapp.cli", "batchapp.service", "batchapp.tasks", "batchapp.broker"),
    "batchapp.broker": ("batchapp.cli", "batchapp.service", "batchapp.tasks", "batchapp.ledger"),
    "batchapp.tasks": ("batchapp.cli", "batchapp.service"),
    "batchapp.service": ("batchapp.cli", "batchapp.web"),
    # The web UI renders what service returns, as the CLI does.
    "batchapp.web": (
        "batchapp.cli",
        "batchapp.tasks",
        "batchapp.ledger",
        "batchapp.jobs",
        "batchapp.storage",
    ),
}


# The worker's consumer is where Celery hands each message to batchapp: it calls the broker's
# guard and reject, the one place the wall calls up.
EXCEPTIONS = {("batchapp.internals.consumer", "batchapp.broker.consumer")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every batchapp module and the batchapp modules it imports (at any depth in its code)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "batchapp" or node.module.startswith("batchapp."):
                    found[name].update(_imported(node.module, a.name) for a in node.names)
            elif isinstance(node, ast.Import):
                found[name].update(a.name for a in node.names if a.name.startswith("batchapp."))
    return found


def _imported(module: str, name: str) -> str:
    """``from module import name``: the submodule if ``name`` is one, else ``module``."""
    folder = PACKAGE.parent.joinpath(*module.split("."))
    is_module = (folder / f"{name}.py").exists() or (folder / name).is_dir()
    return f"{module}.{name}" if is_module else module


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_no_module_imports_a_layer_above_it() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in imports().items()
        for part, forbidden in FORBIDDEN.items()
        if _under(module, part)
        for target in targets
        if any(_under(target, prefix) for prefix in forbidden)
        and (module, target) not in EXCEPTIONS
    )
    assert wrong == []


def test_the_cli_reaches_the_rest_through_the_service_module() -> None:
    reached = {t for m, targets in imports().items() if _under(m, "batchapp.cli") for t in targets}
    # `batchapp web` starts the web UI, which reaches the rest through service too.
    web = {"batchapp.web.app", "batchapp.web.passwords"}
    assert reached - {"batchapp.validate", *web} <= {"batchapp.service"} | {
        t for t in reached if _under(t, "batchapp.cli")
    }
