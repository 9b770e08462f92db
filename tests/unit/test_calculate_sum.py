"""calculate_sum: the task body, called directly (no broker, no eager mode)."""

from __future__ import annotations

from typing import Any

import pytest

from batchapp.sums import MAX_N, sum_range
from batchapp.tasks import calculate_sum


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 12_345])
def test_matches_the_plain_sum(n: int) -> None:
    assert calculate_sum(n) == sum(range(1, n + 1))


def test_recipe_value() -> None:
    assert calculate_sum(100) == 5050


@pytest.mark.parametrize("n", [0, -1, -(10**30)])
def test_n_at_or_below_zero_gives_zero(n: int) -> None:
    assert calculate_sum(n) == 0


def test_is_exact_at_the_bound() -> None:
    assert calculate_sum(MAX_N) == MAX_N * (MAX_N + 1) // 2


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("100", "str '100'"),
        (100.0, "float 100.0"),
        (None, "NoneType None"),
        ([1], "list [1]"),
        (True, "bool True"),
    ],
)
def test_non_int_is_a_type_error_naming_n(value: Any, shown: str) -> None:
    with pytest.raises(TypeError) as raised:
        calculate_sum(value)

    assert str(raised.value) == f"calculate_sum: n must be an int, got {shown}"


def test_beyond_the_bound_is_a_value_error_stating_it() -> None:
    with pytest.raises(ValueError, match=r"n must be <= 1,000,000,000,000,000,000"):
        calculate_sum(MAX_N + 1)


@pytest.mark.parametrize(("first", "last"), [(1, 1), (5, 9), (10, 9), (-3, 3)])
def test_sum_range_matches_the_plain_sum(first: int, last: int) -> None:
    assert sum_range(first, last) == sum(range(first, last + 1))
