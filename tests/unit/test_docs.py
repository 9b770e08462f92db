"""The README and docs/ name only what exists, and speak of the project alone.

Read as text and parsed with ast, never imported: importing batchapp.celery would load the
settings and need the services this tier does without.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
MAX_README_LINES = 300
TEST_COMMAND = 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/pytest'

# batchapp.tasks, batchapp.internals.consumer:Consumer, batchapp.jobs.base.Job ...
DOTTED = re.compile(r"(?<![\w.-])batchapp(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")
SOURCE_PATH = re.compile(r"(?<![\w./-])batchapp/[\w/]+\.py\b")
SETTING = re.compile(r"\bBATCHAPP_[A-Z][A-Z_]*")
FORBIDDEN = re.compile(r"previous session|session's machine|\bthe seed\b|\bissue\s*#?\d+", re.I)
# Files whose 'batchapp.*' string constants name runtime things (queues, a database file), not
# Python: batchapp.calls, batchapp.dead, batchapp.sqlite ...
RUNTIME_NAME_SOURCES = ("batchapp/broker/queues.py", "batchapp/broker/dead_letters.py")


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@cache
def module_tree(relative: str) -> ast.Module:
    return ast.parse((ROOT / relative).read_text(encoding="utf-8"))


@cache
def runtime_names() -> frozenset[str]:
    sources = (*RUNTIME_NAME_SOURCES, "batchapp/settings.py")
    return frozenset(
        node.value
        for source in sources
        for node in ast.walk(module_tree(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"batchapp\.\w+", node.value)
        and not (ROOT / "batchapp" / f"{node.value.split('.')[1]}.py").exists()
    )


def module_file(parts: list[str]) -> str | None:
    """The source file of module ``parts`` (a package's __init__.py), relative to ROOT."""
    base = "/".join(parts)
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate
    return None


def defined_names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Names a module or class body defines: classes, functions, assignments, imports."""
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, ast.If | ast.Try):
            # TYPE_CHECKING blocks and import fallbacks
            names |= defined_names(node.body)
    return names


def unresolved(dotted: str) -> str | None:
    """Why ``dotted`` names nothing in the source tree, or None if it resolves."""
    if dotted in runtime_names():
        return None
    parts = re.split(r"[.:]", dotted)
    for split in range(len(parts), 0, -1):
        source = module_file(parts[:split])
        if source is not None:
            break
    else:
        return "no such module"
    body = module_tree(source).body
    for attribute in parts[split:]:
        node = defined_names(body).get(attribute)
        if node is None:
            return f"{source} defines no {attribute!r}"
        if not isinstance(node, ast.ClassDef):
            break
        body = node.body
    return None


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def test_readme_keeps_the_test_command_that_ci_reads() -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```\n<!-- /test-command -->", text)
    assert block is not None, "README.md lost its test-command markers (.ci/run reads them)"
    assert block.group(1) == TEST_COMMAND


def test_the_docs_link_to_each_other() -> None:
    text = README.read_text(encoding="utf-8")
    assert "docs/internals.md" in text
    assert "internals.md" in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in text, f"README.md does not link to docs/{doc.name}"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_dotted_batchapp_name_exists(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    problems = {
        name: why for name in sorted(set(DOTTED.findall(text))) if (why := unresolved(name))
    }
    assert not problems, f"{doc_id(doc)} names what does not exist: {problems}"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_source_path_exists(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = sorted({path for path in SOURCE_PATH.findall(text) if not (ROOT / path).is_file()})
    assert not missing, f"{doc_id(doc)} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_setting_named_is_a_real_one(doc: Path) -> None:
    settings = (ROOT / "batchapp" / "settings.py").read_text(encoding="utf-8")
    env_example = (ROOT / ".env.example").read_text(encoding="utf-8")
    unknown = sorted(
        name
        for name in set(SETTING.findall(doc.read_text(encoding="utf-8")))
        # settings.py names each without its prefix: env.get("DATA_DIR", ...)
        if name not in env_example and f'"{name.removeprefix("BATCHAPP_")}"' not in settings
    )
    assert not unknown, f"{doc_id(doc)} names settings batchapp does not read: {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_docs_speak_of_the_project_alone(doc: Path) -> None:
    lines = doc.read_text(encoding="utf-8").splitlines()
    found = [
        f"line {number}: {match.group(0)!r}"
        for number, line in enumerate(lines, 1)
        if (match := FORBIDDEN.search(line))
    ]
    assert not found, f"{doc_id(doc)} speaks of its history, not the project: {found}"


@pytest.mark.parametrize(
    ("dotted", "resolves"),
    [
        ("batchapp.broker.guard", True),
        ("batchapp.internals.consumer.Consumer", True),
        ("batchapp.internals.consumer:Consumer", True),
        ("batchapp.jobs.base.Job.commit", True),
        ("batchapp.tasks.calculate_sum", True),
        ("batchapp.chunks", True),  # a queue
        ("batchapp.guard", False),
        ("batchapp.internals.consumer.GuardedConsumer", False),
        ("batchapp.jobs.base.Job.no_such_method", False),
    ],
)
def test_the_name_check_tells_real_names_from_stale_ones(dotted: str, resolves: bool) -> None:
    assert (unresolved(dotted) is None) is resolves
