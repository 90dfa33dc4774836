"""The Validator against a real redis-server: decisions, cache, single flight, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.redis_servers import free_port
from validator import Admin, Reason, StoreUnavailable, Validator

TOKEN = "tok_live_5f3c9a1e2b"


async def read_calls(client: aioredis.Redis) -> int:
    """Reads of a token's record: EXEC of the read transaction (the multiplexed connection) and
    EVALSHA of the read script (redis-py's reads)."""
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("exec", "evalsha"))


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def validator(redis_url: str) -> AsyncIterator[Validator]:
    async with Validator.from_url(redis_url, secret="test-secret") as validator:
        await Admin(validator.store).init()
        yield validator


@pytest.fixture
async def admin(validator: Validator) -> Admin:
    return Admin(validator.store)


async def test_decisions_follow_stored_restrictions(admin: Admin, validator: Validator) -> None:
    await admin.set_domains(TOKEN, ["app.example.com"])
    await admin.set_ips(TOKEN, ["203.0.113.0/24"])
    await admin.enable(TOKEN, "domain")
    await admin.enable(TOKEN, "ip")
    assert (await validator.check(TOKEN, origin="https://app.example.com")).reason is Reason.DOMAIN_LISTED
    assert (await validator.check(TOKEN, origin="https://evil.test")).reason is Reason.DOMAIN_NOT_LISTED
    assert (await validator.check(TOKEN, client_ip="203.0.113.99")).reason is Reason.IP_LISTED
    assert (await validator.check(TOKEN, client_ip="198.51.100.1")).reason is Reason.IP_NOT_LISTED


async def test_single_flight_1000_concurrent_checks_one_read(
    admin: Admin, validator: Validator, raw: aioredis.Redis
) -> None:
    await admin.set_ips(TOKEN, ["203.0.113.7"])
    await admin.enable(TOKEN, "ip")
    await validator.sync()
    await validator.check("some other token", client_ip="203.0.113.7")  # connect, load the script
    await raw.config_resetstat()
    decisions = await asyncio.wait_for(
        asyncio.gather(*(validator.check(TOKEN, client_ip="203.0.113.7") for _ in range(1000))), timeout=30
    )
    assert all(d.allowed and d.reason is Reason.IP_LISTED for d in decisions)
    assert await read_calls(raw) == 1


async def test_cached_token_needs_no_redis(admin: Admin, validator: Validator, raw: aioredis.Redis) -> None:
    await admin.set_domains(TOKEN, ["app.example.com"])
    await admin.enable(TOKEN, "domain")
    await validator.sync()  # the writes' own invalidations must not evict what is warmed next
    await validator.check(TOKEN, origin="https://app.example.com")
    await raw.config_resetstat()
    for _ in range(100):
        assert (await validator.check(TOKEN, origin="https://app.example.com")).allowed
        assert validator.check_cached(TOKEN, origin="https://app.example.com") is not None
    assert await read_calls(raw) == 0


async def test_unknown_tokens_are_cached_negatively_and_bounded(redis_url: str, raw: aioredis.Redis) -> None:
    async with Validator.from_url(redis_url, secret="s", unknown_cache_size=100, cache_size=10) as validator:
        await Admin(validator.store).init()
        await validator.check("warm-up")
        await raw.config_resetstat()
        for _ in range(5):
            decision = await validator.check("random-token-1", client_ip="198.51.100.1")
            assert (decision.allowed, decision.reason) == (True, Reason.UNKNOWN_TOKEN)
        assert await read_calls(raw) == 1
        for n in range(1000):
            await validator.check(f"flood-{n}")
        assert len(validator.cache) <= 110


async def test_flood_of_unknown_tokens_does_not_evict_known_ones(
    admin: Admin, redis_url: str, raw: aioredis.Redis
) -> None:
    await admin.set_ips(TOKEN, ["203.0.113.7"])
    await admin.enable(TOKEN, "ip")
    async with Validator.from_url(redis_url, secret="test-secret", unknown_cache_size=50) as validator:
        await validator.check(TOKEN, client_ip="203.0.113.7")
        for n in range(500):
            await validator.check(f"flood-{n}")
        assert validator.check_cached(TOKEN, client_ip="203.0.113.7") is not None


async def test_unknown_token_policy_deny(redis_url: str) -> None:
    async with Validator.from_url(redis_url, secret="s", unknown_token="deny") as validator:
        await Admin(validator.store).init()
        decision = await validator.check("never-stored", origin="https://app.example.com")
        assert (decision.allowed, decision.reason) == (False, Reason.UNKNOWN_TOKEN)


async def test_unreachable_store_fails_closed() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with Validator.from_url(url, secret="s", connect_timeout=0.2, timeout=0.2) as validator:
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(validator.check(TOKEN, client_ip="203.0.113.7"), timeout=5)


async def test_unreachable_store_can_fail_open() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with Validator.from_url(url, secret="s", fail_open=True, connect_timeout=0.2) as validator:
        decision = await asyncio.wait_for(validator.check(TOKEN, client_ip="203.0.113.7"), timeout=5)
        assert (decision.allowed, decision.reason) == (True, Reason.STORE_UNAVAILABLE)


async def test_store_errors_are_never_raw_redis_errors(redis_url: str, raw: aioredis.Redis) -> None:
    async with Validator.from_url(redis_url, secret="s") as validator:
        token_hash = validator.store.token_hash(TOKEN)
        await raw.set(validator.store.keys(token_hash)[0], "not a hash")  # WRONGTYPE inside the script
        with pytest.raises(StoreUnavailable):
            await validator.check(TOKEN)
