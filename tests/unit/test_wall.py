"""Private names of Celery, kombu, py-amqp and billiard are used in batchapp.internals only."""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[2] / "batchapp"
WALLED = PACKAGE / "internals"
FOREIGN = ("celery", "kombu", "amqp", "billiard")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _foreign_bases(tree: ast.Module) -> dict[str, Any]:
    """The foreign classes a module's classes may subclass, by the name it imports them as."""
    imported = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in FOREIGN
        ):
            for alias in node.names:
                value = getattr(importlib.import_module(node.module), alias.name, None)
                if isinstance(value, type):
                    imported[alias.asname or alias.name] = value
    return imported


@functools.cache
def _private_names(cls: type) -> frozenset[str]:
    """The private names a foreign class and its bases define, or set on ``self``."""
    names = {name for name in dir(cls) if _private(name)}
    for base in cls.__mro__:
        if base.__module__.split(".")[0] in FOREIGN:
            with contextlib.suppress(OSError, TypeError):
                names.update(re.findall(r"self\.(_\w+)\s*=", inspect.getsource(base)))
    return frozenset(name for name in names if _private(name))


def _inherited_private(tree: ast.Module) -> list[str]:
    """``self._x`` and ``def _x`` inside a class whose foreign base has ``_x``."""
    bases_by_name = _foreign_bases(tree)
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        bases = [
            bases_by_name[b.id]
            for b in cls.bases
            if isinstance(b, ast.Name) and b.id in bases_by_name
        ]
        if not bases:
            continue
        for node in ast.walk(cls):
            name = None
            if isinstance(node, ast.FunctionDef):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                name = node.attr if node.value.id in ("self", "cls") else None
            if name and _private(name) and any(name in _private_names(base) for base in bases):
                found.append(f"{node.lineno}: {cls.name}.{name}")
    return found


def private_uses(source: str) -> list[str]:
    """Each private attribute read on anything but ``self``/``cls``, each ``super()._x``, each
    private attribute of a foreign base class used or overridden, and each import of a private
    foreign module, as 'line: text'."""
    tree = ast.parse(source)
    found = _inherited_private(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] in FOREIGN and (
                any(_private(p) for p in parts) or any(_private(a.name) for a in node.names)
            ):
                found.append(f"{node.lineno}: from {node.module} import ...")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def test_no_private_foreign_name_outside_the_internals_package() -> None:
    outside = {
        str(path.relative_to(PACKAGE)): uses
        for path in PACKAGE.rglob("*.py")
        if WALLED not in path.parents and (uses := private_uses(path.read_text()))
    }
    assert outside == {}


def test_the_check_finds_what_it_looks_for() -> None:
    source = (
        "from celery._state import get_current_worker_task\n"
        "from celery.beat import Scheduler\n"
        "x = channel._basic_publish\n"
        "y = super()._get_task_meta()\n"
        "z = self._mine\n"
        "class Mine(Scheduler):\n"
        "    def _when(self): return self._heap or self._mine\n"
    )
    assert private_uses(source) == [
        "1: from celery._state import ...",
        "3: ._basic_publish",
        "4: ._get_task_meta",
        "7: Mine._when",
        "7: Mine._heap",
    ]
