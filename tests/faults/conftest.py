"""Fixtures of the fault tests: deployments of their own, which a test may break."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_cluster import LocalSentinel


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    """A master, a replica and three sentinels of this test's own (it may kill or fail them over)."""
    setup = LocalSentinel()
    setup.start()
    yield setup
    setup.cleanup()
