"""The public job API: the registry, the short form's parameters, guarded user code, and
discovery through BATCHAPP_JOBS and entry points, each failure one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import batchapp
from batchapp import Bool, Choice, Float, Int, Job, ParamError, Str, job, ranges
from batchapp.jobs import JOBS, JobContext
from batchapp.jobs.discovery import DiscoveryError, discover, register_module
from batchapp.jobs.registry import BUILT_IN, JobRegistry, JobRegistryError
from tests.support import run_cli

ROOT = Path(__file__).resolve().parents[2]
BUILT_INS = {"parallel_sum", "import_csv", "report", "cleanup"}
CTX: Any = None  # the short form and the guards never touch the context


def test_importing_batchapp_loads_neither_settings_nor_celery() -> None:
    code = (
        "import sys, batchapp; from batchapp import Job, job, Int; "
        "print(sorted(m for m in sys.modules if m.startswith(('celery', 'batchapp.settings', "
        "'batchapp.celery'))))"
    )
    env = {**os.environ, "BATCHAPP_TIMEZONE": "Nowhere/Else"}  # would fail if settings loaded
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "[]", "")


def test_the_public_names_are_exported() -> None:
    assert set(batchapp.__all__) <= set(dir(batchapp))
    for name in batchapp.__all__:
        assert getattr(batchapp, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        batchapp.nothing  # type: ignore[attr-defined]  # noqa: B018


def test_the_registry_reads_like_the_old_dict_and_knows_origins() -> None:
    assert set(JOBS) >= BUILT_INS
    assert JOBS["parallel_sum"].name == "parallel_sum"
    assert JOBS.get("nope") is None
    assert {JOBS.origin(name) for name in BUILT_INS} == {BUILT_IN}
    with pytest.raises(ParamError, match=r"^unknown job 'nope' \(known: .*parallel_sum"):
        JOBS.get_job("nope")


class _Squares(Job):
    name = "acme.squares"
    summary = "sum of squares"
    params_help = "n=INT"

    def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        return {"n": int(raw["n"])}

    def plan(self, params: dict[str, Any], ctx: JobContext) -> Iterator[dict[str, Any]]:
        if params["n"] < 0:
            raise RuntimeError("negative")
        yield {"first": 1, "last": params["n"]}

    def commit(self, connection: Any, chunk: Any, ctx: JobContext) -> Any:
        raise NotImplementedError


def test_a_second_job_of_a_name_is_refused_naming_both_origins() -> None:
    registry = JobRegistry()
    first = _Squares()
    registry.register(first, "module acme.jobs")
    registry.register(first, "module acme.jobs")  # the same object again: nothing happens
    with pytest.raises(JobRegistryError) as caught:
        registry.register(_Squares(), "entry point acme (acme-jobs)")
    assert str(caught.value) == (
        "entry point acme (acme-jobs): job 'acme.squares' clashes with the job of that name "
        "from module acme.jobs"
    )
    with pytest.raises(JobRegistryError, match="clashes"):
        JOBS["parallel_sum"] = _Squares()  # the old dict's way, checked the same


def test_exceptions_from_a_jobs_own_code_become_one_line_param_errors() -> None:
    squares = _Squares()
    cases = [
        (
            {"n": "x"},
            "acme.squares: bad parameters (ValueError: invalid literal for int() "
            "with base 10: 'x')",
        ),
        ({}, "acme.squares: bad parameters (KeyError: 'n')"),
    ]
    for raw, message in cases:
        with pytest.raises(ParamError) as caught:
            squares.parse_params(raw, CTX)
        assert str(caught.value) == message
    with pytest.raises(ParamError) as caught:
        list(squares.plan({"n": -1}, CTX))
    assert str(caught.value) == "acme.squares: cannot plan its chunks (RuntimeError: negative)"
    assert list(squares.plan({"n": 3}, CTX)) == [{"first": 1, "last": 3}]


def test_file_and_database_errors_keep_their_type() -> None:
    class Reads(_Squares):
        def parse_params(self, raw: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
            raise FileNotFoundError(2, "No such file or directory", "x.csv")

    with pytest.raises(FileNotFoundError):
        Reads().parse_params({}, CTX)


def _short() -> Any:
    @job(
        "acme.short",
        params={
            "n": Int(min=0, max=1000),
            "ratio": Float(min=0, max=1, default=0.5),
            "label": Str(max_len=5, default="x"),
            "dry": Bool(default=False),
            "mode": Choice("fast", "slow", default="fast"),
        },
        chunks=lambda p: ranges(1, p["n"], 10),
        reduce=sum,
        register=False,
    )
    def short(spec: dict[str, Any], params: dict[str, Any]) -> int:
        """the short form"""
        return int(spec["last"] - spec["first"] + 1)

    return short


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "acme.short: missing parameter n (an integer)"),
        ({"n": "ten"}, "acme.short: n must be an integer, got 'ten'"),
        ({"n": "1001"}, "acme.short: n must be between 0 and 1,000, got 1,001"),
        ({"n": True}, "acme.short: n must be an integer, got bool"),
        ({"n": "1", "ratio": "nan"}, "acme.short: ratio must be a finite number, got 'nan'"),
        ({"n": "1", "ratio": "inf"}, "acme.short: ratio must be a finite number, got 'inf'"),
        ({"n": "1", "ratio": "1.5"}, "acme.short: ratio must be between 0 and 1, got 1.5"),
        ({"n": "1", "ratio": "half"}, "acme.short: ratio must be a number, got 'half'"),
        ({"n": "1", "label": "toolong"}, "acme.short: label must be 1 to 5 characters, got 7"),
        ({"n": "1", "label": " "}, "acme.short: label must be 1 to 5 characters, got 0"),
        ({"n": "1", "dry": "maybe"}, "acme.short: dry must be true or false, got 'maybe'"),
        ({"n": "1", "mode": "warp"}, "acme.short: mode must be one of fast, slow, got 'warp'"),
        (
            {"n": "1", "size": "2"},
            "acme.short: unknown parameter 'size' (known: dry, label, mode, n, ratio)",
        ),
    ],
)
def test_declared_parameters_give_one_line_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamError) as caught:
        _short().parse_params(raw, CTX)
    assert str(caught.value) == message


def test_the_short_form_is_a_real_job() -> None:
    short = _short()
    params = short.parse_params(
        {"n": "25", "ratio": "0.25", "label": " ab ", "dry": "yes", "mode": "slow"}, CTX
    )
    assert params == {"n": 25, "ratio": 0.25, "label": "ab", "dry": True, "mode": "slow"}
    assert short.parse_params({"n": 5}, CTX)["mode"] == "fast"
    specs = list(short.plan(params, CTX))
    assert specs == [{"first": 1, "last": 10}, {"first": 11, "last": 20}, {"first": 21, "last": 25}]
    outputs = [short.commit(None, _chunk(short, params, spec), CTX).output for spec in specs]
    assert isinstance(short, Job) and short.reduce(params, outputs) == 25
    assert (short.summary, short.params_help.split(", ")[0]) == (
        "the short form",
        "n=INT (0..1,000)",
    )


def _chunk(short: Any, params: dict[str, Any], spec: dict[str, Any]) -> Any:
    from batchapp import Chunk

    return Chunk("id", params, spec, short.prepare(params, spec, CTX))


def test_a_chunks_function_that_fails_is_a_param_error_naming_the_job() -> None:
    @job("acme.bad_plan", chunks=lambda p: iter([1]), register=False)
    def bad(spec: dict[str, Any], params: dict[str, Any]) -> None:
        return None

    with pytest.raises(ParamError) as caught:
        list(bad.plan({}, CTX))
    assert str(caught.value) == "acme.bad_plan: chunks must yield dicts, got int"


def test_a_module_registers_its_instances_and_its_own_concrete_classes(tmp_path: Path) -> None:
    module = _module(
        tmp_path,
        "team_jobs",
        """
        from batchapp import Job, Int, job
        from batchapp.jobs.parallel_sum import ParallelSum  # imported, not defined: skipped

        class Base(Job):  # no name: a base for others
            def parse_params(self, raw, ctx): return {}
            def plan(self, params, ctx): yield {}
            def commit(self, connection, chunk, ctx): return None

        class One(Base):
            name = "team.one"

        class Two(Base):
            name = "team.two"

        two = Two()  # registered through this instance, not a second time by its class

        @job("team.three", register=False)
        def three(spec, params): return 3
        """,
    )
    registry = JobRegistry()
    found = register_module(module, "module team_jobs", registry)
    assert sorted(j.name for j in found) == ["team.one", "team.three", "team.two"]
    assert registry["team.two"] is module.two
    assert registry.origin("team.one") == "module team_jobs"


def _module(tmp_path: Path, name: str, source: str) -> Any:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(tmp_path))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_discover_names_the_module_that_fails(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError) as caught:
        discover(["no_such_team_module"], registry=JobRegistry(), use_entry_points=False)
    assert str(caught.value) == (
        "module no_such_team_module: cannot import it: ModuleNotFoundError: "
        "No module named 'no_such_team_module'"
    )


# Discovery as the CLI meets it: `batchapp job-types` with BATCHAPP_JOBS and entry points.


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    (folder / "teamjobs").mkdir(parents=True)
    (folder / "teamjobs" / "__init__.py").write_text("")
    (folder / "teamjobs" / "good.py").write_text(
        textwrap.dedent(
            """
            from batchapp import Int, job

            @job("team.double", params={"n": Int(min=0, max=10)})
            def double(spec, params):
                "twice n"
                return 2 * params["n"]

            class NotAJob:
                pass
            """
        )
    )
    (folder / "teamjobs" / "broken.py").write_text("import no_such_dependency\n")
    (folder / "teamjobs" / "clash.py").write_text(
        "from batchapp import job\n\n@job('parallel_sum')\ndef mine(spec, params): return 0\n"
    )
    return folder


def _entry_points(site: Path, lines: str) -> None:
    dist = site / "team_jobs-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: team-jobs\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[batchapp.jobs]\n{lines}\n")


def _job_types(site: Path, *args: str, jobs: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "BATCHAPP_JOBS": jobs}
    return run_cli("job-types", *args, env=env)


def test_job_types_lists_built_ins_and_a_discovered_module(site: Path) -> None:
    done = _job_types(site, "--json", jobs="teamjobs.good")
    listed = {t["name"]: t for t in json.loads(done.stdout)}
    assert done.returncode == 0, done.stderr
    assert set(listed) >= BUILT_INS
    assert listed["team.double"] == {
        "name": "team.double",
        "summary": "twice n",
        "params": "n=INT (0..10)",
        "queue": "batchapp.chunks",
        "origin": "module teamjobs.good",
    }
    table = _job_types(site, jobs="teamjobs.good").stdout.splitlines()
    assert table[0].split() == ["NAME", "FROM", "PARAMETERS", "SUMMARY"]
    assert any(line.split()[:3] == ["team.double", "module", "teamjobs.good"] for line in table)


def test_job_types_lists_entry_points(site: Path) -> None:
    _entry_points(site, "double = teamjobs.good\nsquares = tests.acme_jobs:Squares")
    done = _job_types(site, "--json")
    origins = {t["name"]: t["origin"] for t in json.loads(done.stdout)}
    assert done.returncode == 0, done.stderr
    assert origins["team.double"] == "entry point double (team-jobs)"
    assert origins["acme.squares"] == "entry point squares (team-jobs)"


@pytest.mark.parametrize(
    ("jobs", "entry_points", "message"),
    [
        (
            "teamjobs.broken",
            "",
            "batchapp: module teamjobs.broken: cannot import it: ModuleNotFoundError: "
            "No module named 'no_such_dependency'",
        ),
        (
            "teamjobs.clash",
            "",
            "batchapp: module teamjobs.clash: job 'parallel_sum' clashes with the job of that "
            "name from built-in",
        ),
        (
            "tests.acme_jobs",
            "again = tests.acme_jobs:Squares",
            "batchapp: entry point again (team-jobs): job 'acme.squares' clashes with the job "
            "of that name from module tests.acme_jobs",
        ),
        (
            "",
            "odd = teamjobs.good:NotAJob",
            "batchapp: entry point odd (team-jobs): 'teamjobs.good:NotAJob' is a class "
            "NotAJob, not a module, Job class or Job",
        ),
        (
            "",
            "gone = teamjobs.nothing",
            "batchapp: entry point gone (team-jobs): cannot load 'teamjobs.nothing': "
            "ModuleNotFoundError: No module named 'teamjobs.nothing'",
        ),
        (
            "teamjobs.good,",
            "",
            "batchapp: BATCHAPP_JOBS: empty module name in 'teamjobs.good,' "
            "(separate modules by ',')",
        ),
    ],
)
def test_discovery_failures_stop_the_cli_with_one_line(
    site: Path, jobs: str, entry_points: str, message: str
) -> None:
    if entry_points:
        _entry_points(site, entry_points)
    done = _job_types(site, jobs=jobs)
    assert (done.returncode, done.stdout, done.stderr.strip()) == (1, "", message)
