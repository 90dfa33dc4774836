"""Admin changes reach every one of several validator processes, each as its own OS process."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import pytest

from tests.faults.propagation import measure
from tests.redis_servers import RedisProcess

pytestmark = [pytest.mark.promise("P-INVALIDATION")]


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    process = RedisProcess()
    process.start()
    yield process
    process.cleanup()


@pytest.mark.timeout(120)
async def test_every_change_reaches_every_process(server: RedisProcess) -> None:
    result = await measure(server.url, server.port, processes=4, changes=40, via_redis_cli_every=4)
    assert result.missed == 0
    assert result.wrong == []
    assert len(result.delays) == 4 * 40
    median_ms = statistics.median(result.delays) * 1000
    print(f"propagation delay over {len(result.delays)} (change, process) pairs: median {median_ms:.2f} ms")
