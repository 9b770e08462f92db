"""The job's own steps, called in order as a worker would, with no services: parameters, plan,
each chunk, the reduce; and every way out of the data folder refused."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from batchapp import Chunk, ParamError

from acme_batch.jobs import FileChanged, WordCount
from acme_batch.samples import copy_samples
from acme_batch.words import count_words, top_words


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    copy_samples(tmp_path / "data" / "texts")
    return tmp_path / "data"


def context(data_dir: Path) -> Any:
    """What the job reads of its context: the data folder."""
    return SimpleNamespace(settings=SimpleNamespace(data_dir=data_dir))


def run_in_process(data_dir: Path, raw: dict[str, Any]) -> tuple[Any, int]:
    """The job's result and its chunk count, every chunk run here one after another."""
    job, ctx = WordCount(), context(data_dir)
    params = job.parse_params(raw, ctx)
    outputs = []
    specs = list(job.plan(params, ctx))
    for spec in specs:
        prepared = job.prepare(params, spec, ctx)
        outcome = job.commit(None, Chunk("job", params, spec, prepared), ctx)  # type: ignore[arg-type]
        outputs.append(outcome.output)
    return job.reduce(params, outputs), len(specs)


def test_the_job_counts_every_word_of_the_folder_once(data_dir: Path) -> None:
    direct: Counter[str] = Counter()
    for path in (data_dir / "texts").glob("*.txt"):
        direct += count_words(path.read_text(encoding="utf-8"))

    whole, files = run_in_process(data_dir, {"folder": "texts", "top": "3"})
    ranged, chunks = run_in_process(data_dir, {"folder": "texts", "chunk_bytes": "100"})

    assert files == 5
    assert chunks > 40
    assert whole == {"words": direct.total(), "distinct": len(direct), "top": top_words(direct, 3)}
    assert ranged == {**whole, "top": top_words(direct, 10)}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "acme.wordcount: missing parameter folder (a string)"),
        ({"folder": "texts", "size": "1"}, "acme.wordcount: unknown parameter 'size' (known: "),
        ({"folder": "../.."}, "acme.wordcount: '../..' is outside BATCHAPP_DATA_DIR"),
        ({"folder": "/etc"}, "acme.wordcount: '/etc' is outside BATCHAPP_DATA_DIR"),
        ({"folder": "nope"}, "acme.wordcount: folder not found: 'nope' (paths are relative to"),
        ({"folder": "texts/mill.txt"}, "acme.wordcount: texts/mill.txt is not a folder"),
        ({"folder": "texts", "chunk_bytes": "10"}, "chunk_bytes must be between 64 and"),
    ],
)
def test_bad_parameters_are_refused_in_one_line(
    data_dir: Path, raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ParamError) as refused:
        WordCount().parse_params(raw, context(data_dir))
    assert message in str(refused.value)


def test_symlinks_out_of_the_data_folder_are_refused(data_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("private words")
    os.symlink(outside, data_dir / "escape")
    os.symlink(outside / "secret.txt", data_dir / "texts" / "secret.txt")
    job, ctx = WordCount(), context(data_dir)

    with pytest.raises(ParamError, match="escape' is outside BATCHAPP_DATA_DIR"):
        job.parse_params({"folder": "escape"}, ctx)
    params = job.parse_params({"folder": "texts"}, ctx)
    with pytest.raises(ParamError, match=r"^acme\.wordcount: 'texts/secret\.txt' is outside"):
        list(job.plan(params, ctx))


def test_a_folder_without_matching_files_is_refused(data_dir: Path) -> None:
    job, ctx = WordCount(), context(data_dir)
    params = job.parse_params({"folder": "texts", "pattern": "*.csv"}, ctx)
    with pytest.raises(ParamError, match=r"no file matches \*\.csv in texts"):
        list(job.plan(params, ctx))


def test_a_file_changed_since_submit_fails_its_chunk(data_dir: Path) -> None:
    job, ctx = WordCount(), context(data_dir)
    params = job.parse_params({"folder": "texts"}, ctx)
    spec = next(iter(job.plan(params, ctx)))
    with (data_dir / spec["path"]).open("a") as file:
        file.write("one more line\n")

    with pytest.raises(FileChanged, match="changed since the job was submitted"):
        job.prepare(params, spec, ctx)
