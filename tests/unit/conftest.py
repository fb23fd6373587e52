"""Fixtures the unit tests share: the bundled policy, the golden set, one BLAS thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from judges.golden import GoldenItem, load_golden
from schemas.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def policy() -> Policy:
    """The bundled product-search policy (a module may define its own ``policy`` instead)."""
    return load_policy(REPO / "policies/product-search.yaml")


@pytest.fixture(scope="session")
def golden() -> list[GoldenItem]:
    """The bundled golden set."""
    return load_golden(REPO / "data/wands/golden.jsonl")


@pytest.fixture(scope="module")
def one_blas_thread() -> Iterator[None]:
    """One OpenBLAS thread for embedding-heavy modules: on a busy 2-core box BLAS threads only
    contend (20x slower measured under load). Use with ``pytestmark = usefixtures(...)``."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield
