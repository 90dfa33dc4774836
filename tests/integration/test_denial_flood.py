"""A flood of invented tokens costs Redis a bounded amount of memory (docs/behaviour.md, "Unknown tokens
cannot grow the store"), against a real redis-server.

Before the fix, each denied invented token got a stream of its own without expiry: 100,000
tokens left 100,000 keys and 436 MB (measured at 210a2b6).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.redis_cluster import Backend
from validator import Admin, Reason, Validator

pytestmark = [pytest.mark.promise("P-DENIAL-LOG-BOUNDED")]

FLOOD = 100_000
AT_ONCE = 100  # checks in flight together, as a busy server would have them
TOKEN = "tok_live_flood_do_not_print"
# One stream entry holds at most 256 characters of what was seen and 300 of origin, plus five
# short fields: under 1 KB. Each shard of the unknown-token log may hold one stream node (4 KB
# by default) beyond its cap, and the key itself costs a few hundred bytes: 8 KB a shard.
ENTRY_BYTES = 1024
SHARD_BYTES = 8192


def invented(rng: random.Random) -> tuple[str, str]:
    """A random token and the longest Origin the denial log keeps (four 60-character labels)."""
    label = rng.randbytes(120).hex()
    host = ".".join(label[n : n + 60] for n in range(0, 240, 60)) + ".test"
    return f"tok_{rng.randbytes(16).hex()}", f"https://{host}:8443"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_flood_of_invented_tokens_grows_redis_by_a_bounded_amount(
    redis_url: str, raw: aioredis.Redis
) -> None:
    async with Validator.from_url(redis_url, secret="s", unknown_token="deny") as validator:
        log, store, admin = validator.denial_log, validator.store, Admin(validator.store)
        assert log is not None
        await admin.init()
        await admin.set_ips(TOKEN, ["203.0.113.7"])
        await admin.enable(TOKEN, "ip")
        await validator.sync()
        # Scripts loaded, connections open, the stored token's stream written: then measure.
        assert (await validator.check(TOKEN, client_ip="198.51.100.7")).reason is Reason.IP_NOT_LISTED
        await validator.check(*invented(random.Random(0))[:1])
        await asyncio.wait_for(log.flush(), 10)
        memory_before = (await raw.info("memory"))["used_memory"]
        keys_before = await raw.dbsize()

        rng = random.Random(12)
        for _ in range(0, FLOOD, AT_ONCE):
            requests = [invented(rng) for _ in range(AT_ONCE)]
            decisions = await asyncio.gather(*(validator.check(t, origin=o) for t, o in requests))
            assert {d.reason for d in decisions} == {Reason.UNKNOWN_TOKEN}
        await asyncio.wait_for(log.flush(), 120)

        growth = (await raw.info("memory"))["used_memory"] - memory_before
        keys = await raw.dbsize()
        shards = len(store.unknown_denials_keys())
        bound = validator.settings["denial_unknown_length"] * ENTRY_BYTES + shards * SHARD_BYTES
        print(f"\n{FLOOD} invented tokens: +{growth} bytes (bound {bound}), keys {keys_before} -> {keys}")
        assert log.recorded + log.dropped + log.failed == FLOOD + 2
        assert log.recorded > FLOOD // 2  # written, not dropped: the bound holds for what is kept
        assert growth < bound
        assert keys <= keys_before + shards

        # The stored token's denials are still its own, listed and expiring.
        denied = await validator.check(TOKEN, origin="https://evil.test")
        assert denied.reason is Reason.FRONT_END_NOT_ALLOWED
        await asyncio.wait_for(log.flush(), 10)
        assert [d["reason"] for d in await admin.denials(TOKEN)] == ["front_end_not_allowed", "ip_not_listed"]
        assert await raw.pttl(store.denials_key(store.token_hash(TOKEN))) > 0


@pytest.mark.timeout(180)
async def test_a_flood_of_invented_tokens_adds_no_key_on_any_deployment(backend: Backend) -> None:
    # The bound in keys and stream lengths on each deployment (bytes are measured above, on one
    # server): whatever the number of invented tokens, the store gains at most the 16 shards of
    # the unknown-token log, each trimmed to its share of `denial_unknown_length`.
    flood, unknown_length = 3_000, 320
    nodes = backend.write_nodes()
    try:
        async with Validator.from_url(
            backend.url, secret="s", unknown_token="deny", denial_unknown_length=unknown_length
        ) as validator:
            log, store = validator.denial_log, validator.store
            assert log is not None
            await Admin(store).init()
            keys_before = sum([await node.dbsize() for node in nodes])
            rng = random.Random(7)
            for _ in range(0, flood, AT_ONCE):
                requests = [invented(rng) for _ in range(AT_ONCE)]
                decisions = await asyncio.gather(*(validator.check(t, origin=o) for t, o in requests))
                assert {d.reason for d in decisions} == {Reason.UNKNOWN_TOKEN}
            await asyncio.wait_for(log.flush(), 120)
            assert log.recorded > flood // 2
            shards = store.unknown_denials_keys()
        keys = [key for node in nodes async for key in node.scan_iter(match="*")]
        assert len(keys) <= keys_before + len(shards), sorted(keys)
        # A stream may exceed its cap by at most one node of entries (MAXLEN ~, 100 by default).
        per_shard = -(-unknown_length // len(shards))
        lengths = [
            await node.xlen(key)
            for node in nodes
            async for key in node.scan_iter(match="*-denials:unknown:*")
        ]
        assert 0 < len(lengths) <= len(shards)
        assert max(lengths) <= per_shard + 100, lengths
    finally:
        for node in nodes:
            await node.aclose()
