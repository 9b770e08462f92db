"""The counting itself, with no services: words, byte ranges that cut no word, the merge."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acme_batch.samples import copy_samples, sample_texts
from acme_batch.words import byte_ranges, count_range, count_words, merge, top_words


def test_words_are_letters_with_inner_apostrophes_in_lower_case() -> None:
    text = "The cat's hat -- THE Cat, the 2 cats' café don't_stop o'clock naïve"
    assert count_words(text) == Counter(
        {
            "the": 3,
            "cat's": 1,
            "hat": 1,
            "cat": 1,
            "cats": 1,
            "café": 1,
            "don't": 1,
            "stop": 1,
            "o'clock": 1,
            "naïve": 1,
        }
    )


def test_top_words_ranks_by_count_then_alphabetically() -> None:
    counts = {"b": 2, "a": 2, "c": 5, "d": 1}
    assert top_words(counts, 3) == [["c", 5], ["a", 2], ["b", 2]]
    assert top_words(counts, 10) == [["c", 5], ["a", 2], ["b", 2], ["d", 1]]


def ranged_counts(path: Path, chunk_bytes: int) -> tuple[Counter[str], list[tuple[int, int]]]:
    size = path.stat().st_size
    with path.open("rb") as file:
        ranges = list(byte_ranges(file, size, chunk_bytes))
    return merge(count_range(path, start, end) for start, end in ranges), ranges


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 300, 10_000])
def test_the_samples_counted_in_ranges_equal_the_whole_count(
    tmp_path: Path, chunk_bytes: int
) -> None:
    for path in copy_samples(tmp_path):
        counts, ranges = ranged_counts(path, chunk_bytes)
        assert counts == count_words(path.read_text(encoding="utf-8"))
        # The ranges tile the file: each starts where the one before ended.
        assert [start for start, _ in ranges] == [0, *(end for _, end in ranges[:-1])]
        assert ranges[-1][1] == path.stat().st_size


# Text where blanks, multi-byte letters and punctuation meet chunk edges.
TEXTS = st.text(alphabet=st.sampled_from([*"ab ée\n\t'\u2019-.ß漢字é\u00a0\u2003"]))


@given(text=TEXTS, chunk_bytes=st.integers(min_value=1, max_value=40))
def test_any_text_counted_in_ranges_equals_the_whole_count(text: str, chunk_bytes: int) -> None:
    data = text.encode("utf-8")
    ranges = list(byte_ranges(io.BytesIO(data), len(data), chunk_bytes))
    counted = merge(
        count_words(data[start:end].decode("utf-8", errors="strict")) for start, end in ranges
    )
    assert counted == count_words(text)


def test_the_samples_are_a_few_kilobytes_of_text() -> None:
    texts = sample_texts()
    assert len(texts) >= 5
    assert 4_000 <= sum(len(t.encode("utf-8")) for t in texts.values()) <= 20_000
    assert sum(count_words(t).total() for t in texts.values()) > 900
