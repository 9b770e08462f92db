"""batchapp's suite runs the examples' own tests: each example is installed (``pip install -e``,
so its entry points are registered) before they are collected. Alone, an example's tests need
only ``pip install -e .`` in its folder (see its README)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pytest puts the checkout on sys.path only once it imports a module of the tests package.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.examples import WORDCOUNT, install_example  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    install_example(WORDCOUNT, "acme_batch")
