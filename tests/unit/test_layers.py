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
    "batchapp.service": ("batchapp.cli",),
}


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
                if node.module == "batchapp":
                    found[name].update(f"batchapp.{alias.name}" for alias in node.names)
                elif node.module.startswith("batchapp."):
                    found[name].add(node.module)
            elif isinstance(node, ast.Import):
                found[name].update(a.name for a in node.names if a.name.startswith("batchapp."))
    return found


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
    )
    assert wrong == []


def test_the_cli_reaches_the_rest_through_the_service_module() -> None:
    reached = {t for m, targets in imports().items() if _under(m, "batchapp.cli") for t in targets}
    assert reached - {"batchapp.validate"} <= {"batchapp.service"} | {
        t for t in reached if _under(t, "batchapp.cli")
    }
