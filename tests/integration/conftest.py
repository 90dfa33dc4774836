from __future__ import annotations

import pytest

from tests.integration.test_cli_support import Direct


@pytest.fixture
def initialised(redis_url: str) -> str:
    """The test store's URL, marked by `init` as a deployment's store is: admin writes are refused
    on an unmarked store."""
    Direct(redis_url).init()
    return redis_url
