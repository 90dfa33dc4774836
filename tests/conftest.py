from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

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
