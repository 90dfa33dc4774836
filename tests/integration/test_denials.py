"""Report-only mode, the denial log and the metrics, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from validator import Admin, Reason, Validator
from validator.metrics import install

TOKEN = "tok_live_denials_do_not_print"
CLIENT_IP = "198.51.100.77"


@pytest.fixture
async def validator(redis_url: str) -> AsyncIterator[Validator]:
    async with Validator.from_url(redis_url, secret="s", denial_queue_size=100) as validator:
        admin = Admin(validator.store)
        await admin.set_ips(TOKEN, ["203.0.113.7"])
        await admin.enable(TOKEN, "ip")
        await validator.sync()
        yield validator


async def drained(validator: Validator) -> None:
    """Wait (bounded) until the denial log has written everything queued."""
    assert validator.denial_log is not None
    await asyncio.wait_for(validator.denial_log.flush(), 10)


async def test_denials_are_recorded_per_token(validator: Validator) -> None:
    admin = Admin(validator.store)
    assert not (await validator.check(TOKEN, client_ip=CLIENT_IP)).allowed
    assert not (await validator.check(TOKEN, origin="https://evil.test:8443")).allowed
    assert (await validator.check(TOKEN, client_ip="203.0.113.7")).allowed
    await drained(validator)
    denials = await admin.denials(TOKEN)
    assert [(d["source"], d["seen"], d["reason"], d["mode"]) for d in denials] == [
        ("front_end", "evil.test", "front_end_not_allowed", "enforce"),
        ("back_end", CLIENT_IP, "ip_not_listed", "enforce"),
    ]
    assert denials[0]["origin"] == "https://evil.test:8443"


async def test_report_only_never_denies_but_records(validator: Validator) -> None:
    admin = Admin(validator.store)
    await admin.set_mode(TOKEN, "report")
    await validator.sync()
    for request in ({"client_ip": CLIENT_IP}, {"origin": "https://evil.test"}, {"client_ip": None}):
        decision = await validator.check(TOKEN, **request)
        assert decision.allowed
        assert decision.reported
    assert (await validator.check(TOKEN, client_ip="203.0.113.7")).reported is False
    await drained(validator)
    assert {d["mode"] for d in await admin.denials(TOKEN)} == {"report"}
    await admin.set_mode(TOKEN, "enforce")
    await validator.sync()
    assert not (await validator.check(TOKEN, client_ip=CLIENT_IP)).allowed


async def test_a_flood_of_denials_is_bounded_and_counted(validator: Validator, redis_url: str) -> None:
    log = validator.denial_log
    assert log is not None
    high = 0
    for n in range(20_000):
        assert not (await validator.check(TOKEN, client_ip=CLIENT_IP)).allowed
        high = max(high, len(log))
        if n % 1000 == 0:
            await asyncio.sleep(0)  # let the writer run now and then, as a server would
    assert high <= log.queue_size
    await drained(validator)
    assert log.dropped > 0
    assert log.recorded + log.dropped + log.failed == 20_000
    raw = aioredis.Redis.from_url(redis_url)
    length = await raw.xlen(validator.store.denials_key(validator.store.token_hash(TOKEN)))
    await raw.aclose()
    assert length <= log.stream_length + 200  # MAXLEN ~ trims in whole macro nodes


async def test_denial_stream_is_not_tracked_and_keeps_the_token_cached(validator: Validator) -> None:
    await validator.check(TOKEN, client_ip=CLIENT_IP)
    await drained(validator)
    await validator.sync()
    assert validator.check_cached(TOKEN, client_ip=CLIENT_IP) is not None
    assert not validator.store.denials_key("x").startswith(validator.store.key_prefix)


async def test_delete_removes_the_denials(validator: Validator) -> None:
    admin = Admin(validator.store)
    await validator.check(TOKEN, client_ip=CLIENT_IP)
    await drained(validator)
    assert await admin.denials(TOKEN)
    await admin.delete(TOKEN)
    assert await admin.denials(TOKEN) == []


async def test_metrics_count_decisions_with_bounded_labels(validator: Validator) -> None:
    registry = CollectorRegistry()
    install(validator, registry)
    for _ in range(3):
        await validator.check(TOKEN, client_ip=CLIENT_IP)
    await validator.check(TOKEN, client_ip="203.0.113.7")
    await validator.check("tok_unknown_do_not_print", client_ip=CLIENT_IP)
    text = generate_latest(registry).decode()
    decisions = "token_access_decisions_total"
    assert f'{decisions}{{outcome="denied",reason="ip_not_listed",source="back_end"}} 3.0' in text
    assert f'{decisions}{{outcome="allowed",reason="ip_listed",source="back_end"}} 1.0' in text
    assert f'reason="{Reason.UNKNOWN_TOKEN.value}"' in text
    assert "token_access_cache_misses_total 2.0" in text
    assert 'token_access_circuit_breaker_state{state="closed"} 1.0' in text
    assert "token_access_store_read_seconds_bucket" in text
    assert "token_access_invalidation_connected 1.0" in text
    assert "do_not_print" not in text
    for fingerprint in (validator.store.token_hash(TOKEN)[:10],):
        assert fingerprint not in text
