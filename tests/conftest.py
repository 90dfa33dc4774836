from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tests.redis_cluster import Backend, LocalCluster, LocalSentinel
from tests.redis_servers import RedisProcess

pytest_plugins: list[str] = []


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """A redis-server of the suite's own, on a free loopback port, for the whole session."""
    server = RedisProcess()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def redis_url(redis_server: RedisProcess) -> AsyncIterator[str]:
    """The session server's URL, with an empty database for this test."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield redis_server.url
    await client.flushall()
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real Redis Cluster (3 primaries, 3 replicas) on free loopback ports, for the whole session."""
    cluster = LocalCluster()
    cluster.start()
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[LocalSentinel]:
    """A master, a replica and three sentinels on free loopback ports, for the whole session."""
    sentinel = LocalSentinel()
    sentinel.start()
    yield sentinel
    sentinel.cleanup()


@pytest.fixture(params=["standalone", "cluster", "sentinel"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each kind of deployment in turn, with empty data for this test."""
    chosen: Backend
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        chosen = Backend("cluster", cluster.url, lambda: [node.port for node in cluster.primaries()])
    elif request.param == "sentinel":
        sentinel: LocalSentinel = request.getfixturevalue("redis_sentinel")
        chosen = Backend("sentinel", sentinel.url, lambda: [sentinel.current_master().port])
    else:
        server: RedisProcess = request.getfixturevalue("redis_server")
        chosen = Backend("standalone", server.url, lambda: [server.port])
    chosen.flushall()
    yield chosen
    chosen.flushall()


@pytest.fixture
def store_url(backend: Backend) -> str:
    """The URL of `backend`: redis://, redis+cluster:// or redis+sentinel://."""
    return backend.url
