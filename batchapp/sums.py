"""Sums of integer ranges in O(1), exact for any size."""

from __future__ import annotations

MAX_N = 10**18
"""calculate_sum's bound on n: keeps results under 10**36, a sane size for JSON clients."""


def sum_range(first: int, last: int) -> int:
    """first + (first + 1) + ... + last; 0 when the range is empty."""
    if last < first:
        return 0
    return (first + last) * (last - first + 1) // 2


def sum_to(n: int) -> int:
    """1 + 2 + ... + n; 0 for n <= 0, as ``sum(range(1, n + 1))``."""
    return sum_range(1, n)
