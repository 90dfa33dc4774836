from __future__ import annotations

import pytest

from tests.integration.test_cli_support import Cli, Direct


@pytest.fixture
def initialised(redis_url: str) -> str:
    """The test store's URL, marked by `init` as a deployment's store is: admin writes are refused
    on an unmarked store."""
    Direct(redis_url).init()
    return redis_url


@pytest.fixture
def cli(initialised: str) -> Cli:
    """`validator-admin` run as a subprocess against the initialised test store."""
    return Cli(initialised)


@pytest.fixture
def store(initialised: str) -> Direct:
    """The initialised test store, set up and inspected in process through the Python API."""
    return Direct(initialised)
