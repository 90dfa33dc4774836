"""Eviction is a wipe (docs/behaviour.md, "Hardened rules"), against real redis-servers.

A Redis whose `maxmemory-policy` may evict keys without a TTL (`allkeys-*`) can drop a token's
record, which leaves the token unrestricted. `init` refuses such a store unless forced,
validators log an error at start, and where `CONFIG GET` is refused (a managed Redis) both say
that the policy could not be checked and carry on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tests.redis_cluster import LocalCluster, LocalSentinel, redis_cli
from tests.redis_servers import RedisProcess
from validator import Admin, ConfigurationError, Validator

pytestmark = [pytest.mark.promise("P-EVICTION-IS-A-WIPE")]

SECRET = "eviction-test-secret"


def started(*args: str) -> Iterator[RedisProcess]:
    server = RedisProcess(*args)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def evicting() -> Iterator[RedisProcess]:
    """A redis-server started as on a shared cache server: `--maxmemory-policy allkeys-lru`."""
    yield from started("--maxmemory-policy", "allkeys-lru")


@pytest.fixture(scope="module")
def managed() -> Iterator[RedisProcess]:
    """A redis-server without CONFIG, as many managed Redis services are."""
    yield from started("--rename-command", "CONFIG", '""')


@pytest.fixture(scope="module")
def adjustable() -> Iterator[RedisProcess]:
    yield from started()


@pytest.fixture
async def admin(request: pytest.FixtureRequest) -> AsyncIterator[Admin]:
    """An admin on the server named by the test's `server` parameter, emptied before and after."""
    server: RedisProcess = request.getfixturevalue(request.param)
    raw = aioredis.Redis.from_url(server.url)
    await raw.flushall()
    admin = Admin.from_url(server.url, secret=SECRET)
    yield admin
    await admin.close()
    await raw.flushall()
    await raw.aclose()


@pytest.mark.parametrize("admin", ["evicting"], indirect=True)
async def test_init_refuses_a_store_that_may_evict_records(admin: Admin) -> None:
    with pytest.raises(ConfigurationError, match="allkeys-lru") as refused:
        await admin.init()
    assert "CONFIG SET maxmemory-policy noeviction" in str(refused.value)
    assert "--force" in str(refused.value)
    assert await admin.store.marker_state() == "missing"


@pytest.mark.parametrize("admin", ["evicting"], indirect=True)
async def test_init_force_initialises_it_and_warns(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    assert await admin.init(force=True)
    assert await admin.store.marker_state() == "ok"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "allkeys-lru" in warning.getMessage()
    assert "forced" in warning.getMessage()


@pytest.mark.parametrize(
    ("policy", "refused"),
    [
        pytest.param("noeviction", False, id="noeviction"),
        pytest.param("volatile-lru", False, id="volatile-lru"),
        pytest.param("volatile-lfu", False, id="volatile-lfu"),
        pytest.param("volatile-random", False, id="volatile-random"),
        pytest.param("volatile-ttl", False, id="volatile-ttl"),
        pytest.param("allkeys-lru", True, id="allkeys-lru"),
        pytest.param("allkeys-lfu", True, id="allkeys-lfu"),
        pytest.param("allkeys-random", True, id="allkeys-random"),
    ],
)
@pytest.mark.parametrize("admin", ["adjustable"], indirect=True)
async def test_only_policies_that_evict_keys_without_a_ttl_are_refused(
    adjustable: RedisProcess, admin: Admin, policy: str, refused: bool
) -> None:
    raw = aioredis.Redis.from_url(adjustable.url)
    await raw.config_set("maxmemory-policy", policy)
    try:
        if refused:
            with pytest.raises(ConfigurationError, match=policy):
                await admin.init()
        else:
            assert await admin.init()
    finally:
        await raw.config_set("maxmemory-policy", "noeviction")
        await raw.aclose()


@pytest.mark.parametrize("admin", ["managed"], indirect=True)
async def test_where_config_is_refused_init_warns_and_carries_on(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    assert await admin.init()
    assert await admin.store.marker_state() == "ok"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "could not check" in warning.getMessage()


@pytest.mark.parametrize(
    ("server", "level", "says"),
    [
        pytest.param("evicting", logging.ERROR, "allkeys-lru", id="allkeys-lru: an error"),
        pytest.param("managed", logging.WARNING, "could not check", id="CONFIG refused: a warning"),
        pytest.param("adjustable", None, None, id="noeviction: nothing"),
    ],
)
async def test_validators_say_so_at_start(
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    server: str,
    level: int | None,
    says: str | None,
) -> None:
    process: RedisProcess = request.getfixturevalue(server)
    with caplog.at_level(logging.WARNING, logger="validator"):
        async with Validator.from_url(process.url, secret=SECRET):
            pass
    about = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    if level is None:
        assert about == []
    else:
        (record,) = about
        assert record.levelno == level
        assert says is not None and says in record.getMessage()


async def test_init_checks_every_primary_of_a_cluster(redis_cluster: LocalCluster) -> None:
    redis_cluster.flushall()
    victim = redis_cluster.primaries()[-1]
    redis_cli(victim.port, "CONFIG", "SET", "maxmemory-policy", "allkeys-lfu")
    admin = Admin.from_url(redis_cluster.url, secret=SECRET)
    try:
        with pytest.raises(ConfigurationError, match=f"allkeys-lfu on 127.0.0.1:{victim.port}"):
            await admin.init()
        assert await admin.store.marker_state() == "missing"
    finally:
        redis_cli(victim.port, "CONFIG", "SET", "maxmemory-policy", "noeviction")
        await admin.close()
        redis_cluster.flushall()


async def test_init_checks_the_master_of_a_sentinel_deployment(redis_sentinel: LocalSentinel) -> None:
    master = redis_sentinel.current_master()
    redis_cli(master.port, "FLUSHALL")
    redis_cli(master.port, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    admin = Admin.from_url(redis_sentinel.url, secret=SECRET)
    try:
        with pytest.raises(ConfigurationError, match="allkeys-lru"):
            await admin.init()
        assert await admin.store.marker_state() == "missing"
    finally:
        redis_cli(master.port, "CONFIG", "SET", "maxmemory-policy", "noeviction")
        await admin.close()
        redis_cli(master.port, "FLUSHALL")
