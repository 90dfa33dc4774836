"""Fixtures of the fault tests: deployments of their own, which a test may break."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.outage import KINDS, Deployment
from tests.redis_cluster import LocalCluster, LocalSentinel


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """Three primaries with a replica each, of this test's own (it may kill, fail over or reshard
    them). A module may override it (test_blast_radius: without full coverage)."""
    setup = LocalCluster()
    setup.start()
    yield setup
    setup.cleanup()


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    """A master, a replica and three sentinels of this test's own (it may kill or fail them over)."""
    setup = LocalSentinel()
    setup.start()
    yield setup
    setup.cleanup()


@pytest.fixture(scope="module", params=KINDS)
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """One server, a Sentinel setup or a Cluster of this module's own: a test may kill or freeze
    one node, and brings it back (`Deployment.restore`) before it ends."""
    setup = Deployment.start(request.param)
    yield setup
    setup.cleanup()
