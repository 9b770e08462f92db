"""Counting words, with no batchapp in sight: split a file into byte ranges, count each range,
merge the counts.

A word is a run of letters, with inner apostrophes (``don't``, ``o'clock``), compared in lower
case. A range always ends just before an ASCII blank (or at the end of the file), and no word
holds one, so counting the ranges of a file one by one gives the same counts as counting the
whole file. A blank byte is never part of a multi-byte UTF-8 character, so each range decodes
on its own.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")  # inner ' or U+2019
BLANK = re.compile(rb"[ \t\n\r\f\v]")
SCAN_BLOCK = 64 * 1024


def count_words(text: str) -> Counter[str]:
    """How often each word occurs in ``text``."""
    return Counter(word.lower() for word in WORD.findall(text))


def byte_ranges(file: BinaryIO, size: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` ranges of about ``chunk_bytes`` that cover the file and cut no word."""
    start = 0
    while start < size:
        end = _next_blank(file, min(start + chunk_bytes, size), size)
        yield start, end
        start = end


def _next_blank(file: BinaryIO, position: int, size: int) -> int:
    file.seek(position)
    while position < size:
        block = file.read(SCAN_BLOCK)
        if not block:
            break
        found = BLANK.search(block)
        if found:
            return position + found.start()
        position += len(block)
    return size


def count_range(path: Path, start: int, end: int) -> Counter[str]:
    """The word counts of bytes ``start..end`` of ``path`` (bad UTF-8 counts as no letter)."""
    with path.open("rb") as file:
        file.seek(start)
        data = file.read(end - start)
    return count_words(data.decode("utf-8", errors="replace"))


def merge(counts: Iterable[Mapping[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for one in counts:
        total.update(one)
    return total


def top_words(counts: Mapping[str, int], n: int) -> list[list[str | int]]:
    """The ``n`` most frequent words as ``[word, count]``, ties in alphabetical order."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [[word, count] for word, count in ranked[:n]]
