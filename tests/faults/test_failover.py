"""Failovers under load: a Redis Cluster primary and a Sentinel master killed (and demoted) while
validators serve concurrent checks.

Each test runs its own cluster or sentinel setup (tests/redis_cluster.py). As for a single server
(test_outages.py): cached decisions stay correct throughout, uncached checks fail closed quickly
while no node serves the token's slot, the validator recovers on its own once a replica is
promoted, and no restriction is lost or wrongly opened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Mapping

import pytest
from redis.crc import key_slot

from tests.faults.test_outages import CLIENT_IP, FAST, SECRET, Tokens, assert_sound, run_load
from tests.redis_cluster import LocalCluster, LocalSentinel, redis_cli
from validator import Admin, StoreUnavailable, Validator
from validator.core import Settings

pytestmark = [pytest.mark.promise("P-FAIL-CLOSED")]

FAILOVER: Settings = {**FAST, "topology_interval": 0.5}
RECOVERY_TIMEOUT = 20.0


async def seed(url: str) -> Tokens:
    """40 restricted tokens (on a cluster: spread over every primary), half of them allowed."""
    admin = Admin.from_url(url, secret=SECRET)
    await admin.init()
    tokens = Tokens()
    for n in range(40):
        token = f"tok_failover_{n}"
        allowed = n % 2 == 0
        await admin.set_ips(token, [CLIENT_IP if allowed else "203.0.113.9"])
        await admin.enable(token, "ip")
        (tokens.cached if n < 20 else tokens.cold)[token] = allowed
    await admin.close()
    return tokens


async def warm(validator: Validator, tokens: Tokens) -> None:
    """Cache the `cached` tokens. On a loaded machine one command may exceed the 0.2 s timeouts
    (redis-py then refreshes its slot map): the barrier is retried, not the test failed."""
    for attempt in range(3):
        try:
            await validator.sync()
            break
        except StoreUnavailable:
            if attempt == 2:
                raise
            await asyncio.sleep(0.5)
    for token, expected in tokens.cached.items():
        assert (await validator.check(token, client_ip=CLIENT_IP)).allowed is expected


async def recovered(validator: Validator, tokens: Tokens, nodes: set[str]) -> None:
    """Until the listener tracks exactly `nodes` and every cold token is decided as stored."""
    assert validator.listener is not None
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while not (validator.listener.connected.is_set() and set(validator.listener.nodes) == nodes):
        assert time.monotonic() < deadline, f"listener never tracked {nodes}: {validator.listener.nodes}"
        await asyncio.sleep(0.05)
    for token, expected in tokens.cold.items():
        while True:
            try:
                decision = await validator.check(token, client_ip=CLIENT_IP)
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the validator did not recover"
                await asyncio.sleep(0.05)
                continue
            assert decision.allowed is expected, f"{token}: {decision}"
            break


async def assert_nothing_lost(url: str, validator: Validator, tokens: Tokens) -> None:
    """Every stored decision holds, uncached, and a change made now reaches the cache."""
    validator.cache.clear()
    for token, expected in {**tokens.cached, **tokens.cold}.items():
        assert (await validator.check(token, client_ip=CLIENT_IP)).allowed is expected, token
    token = next(t for t, allowed in tokens.cached.items() if allowed)
    admin = Admin.from_url(url, secret=SECRET)
    await admin.set_ips(token, ["203.0.113.99"])
    await admin.close()
    await validator.sync()
    assert not (await validator.check(token, client_ip=CLIENT_IP)).allowed


def nodes_of(ports: list[int]) -> set[str]:
    return {f"127.0.0.1:{port}" for port in ports}


@pytest.mark.promise("P-NEVER-WRONG-ALLOW")  # `assert_sound`: no wrong decision under the load
@pytest.mark.timeout(120)
async def test_cluster_primary_killed_under_load(cluster: LocalCluster) -> None:
    tokens = await seed(cluster.url)
    cluster.wait_replicated()
    async with Validator.from_url(
        cluster.url, secret=SECRET, timeout=0.2, connect_timeout=0.2, **FAILOVER
    ) as validator:
        await warm(validator, tokens)
        victim = cluster.primaries()[0]

        async def failover() -> None:
            await asyncio.sleep(0.3)
            victim.kill()
            await asyncio.to_thread(cluster.wait_failover, victim)
            await recovered(validator, tokens, nodes_of([n.port for n in cluster.primaries()]))

        load = await asyncio.wait_for(run_load(validator, tokens, failover), 90)
        assert_sound(load)
        assert load.fail_closed, "the failover was not observed"
        await assert_nothing_lost(cluster.url, validator, tokens)


@pytest.mark.timeout(120)
async def test_cluster_manual_failover_demotes_a_live_primary(cluster: LocalCluster) -> None:
    tokens = await seed(cluster.url)
    cluster.wait_replicated()
    async with Validator.from_url(
        cluster.url, secret=SECRET, timeout=0.2, connect_timeout=0.2, **FAILOVER
    ) as validator:
        await warm(validator, tokens)
        assert validator.listener is not None
        before = validator.listener.connections
        old = {n.port for n in cluster.primaries()}
        replica = cluster.replicas()[0]

        async def failover() -> None:
            # The old primary lives on as a replica: no connection of ours breaks.
            await asyncio.sleep(0.3)
            assert redis_cli(replica.port, "CLUSTER", "FAILOVER").strip() == "OK"
            await asyncio.to_thread(cluster.wait_ok)
            deadline = time.monotonic() + RECOVERY_TIMEOUT
            while {n.port for n in cluster.primaries()} == old:
                assert time.monotonic() < deadline, "the manual failover did not happen"
                await asyncio.sleep(0.05)
            await recovered(validator, tokens, nodes_of([n.port for n in cluster.primaries()]))

        load = await asyncio.wait_for(run_load(validator, tokens, failover), 90)
        assert_sound(load)
        assert validator.listener.connections > before, "the topology change went unnoticed"
        await assert_nothing_lost(cluster.url, validator, tokens)


@pytest.mark.promise("P-NEVER-WRONG-ALLOW")  # `assert_sound`: no wrong decision under the load
@pytest.mark.timeout(120)
async def test_sentinel_master_killed_under_load(sentinel: LocalSentinel) -> None:
    tokens = await seed(sentinel.url)
    sentinel.wait_replicated()
    async with Validator.from_url(
        sentinel.url, secret=SECRET, timeout=0.2, connect_timeout=0.2, **FAILOVER
    ) as validator:
        await warm(validator, tokens)
        master = sentinel.current_master()

        async def failover() -> None:
            await asyncio.sleep(0.3)
            master.kill()
            await asyncio.to_thread(sentinel.wait_failover, master.port)
            port = sentinel.master_port()
            assert port is not None
            await recovered(validator, tokens, nodes_of([port]))

        load = await asyncio.wait_for(run_load(validator, tokens, failover), 90)
        assert_sound(load)
        assert load.fail_closed, "the failover was not observed"
        await assert_nothing_lost(sentinel.url, validator, tokens)


@pytest.mark.timeout(120)
async def test_sentinel_failover_command_moves_the_listener(sentinel: LocalSentinel) -> None:
    tokens = await seed(sentinel.url)
    sentinel.wait_replicated()
    async with Validator.from_url(
        sentinel.url, secret=SECRET, timeout=0.2, connect_timeout=0.2, **FAILOVER
    ) as validator:
        await warm(validator, tokens)
        old = sentinel.master_port()
        assert old is not None

        async def failover() -> None:
            await asyncio.sleep(0.3)
            assert (
                redis_cli(sentinel.sentinels[0].port, "SENTINEL", "FAILOVER", sentinel.service).strip()
                == "OK"
            )
            await asyncio.to_thread(sentinel.wait_failover, old)
            port = sentinel.master_port()
            assert port is not None
            await recovered(validator, tokens, nodes_of([port]))

        load = await asyncio.wait_for(run_load(validator, tokens, failover), 90)
        assert_sound(load)
        await assert_nothing_lost(sentinel.url, validator, tokens)


def owner(layout: Mapping[str, Hashable], slot: int) -> str:
    return next(
        node
        for node, ranges in layout.items()
        if isinstance(ranges, tuple) and any(start <= slot <= end for start, end in ranges)
    )


@pytest.mark.timeout(120)
async def test_cluster_resharding_under_load(cluster: LocalCluster) -> None:
    tokens = await seed(cluster.url)
    async with Validator.from_url(
        cluster.url, secret=SECRET, timeout=0.2, connect_timeout=0.2, **FAILOVER
    ) as validator:
        await warm(validator, tokens)
        assert validator.listener is not None
        assert validator.store.topology is not None
        layout = await validator.store.topology.discover()
        source, target = cluster.primaries()[:2]

        async def reshard() -> None:
            await asyncio.sleep(0.3)
            # 1,000 slots (6%): some tokens' keys and ~60 marker keys move with them.
            await asyncio.to_thread(cluster.reshard, source, target, 1000)
            await recovered(validator, tokens, nodes_of([n.port for n in cluster.primaries()]))

        load = await asyncio.wait_for(run_load(validator, tokens, reshard), 90)
        moved_layout = await validator.store.topology.discover()
        moved = set()
        for token in tokens.cached:
            slot = key_slot(validator.store.keys(validator.store.token_hash(token))[0].encode())
            if owner(layout, slot) != owner(moved_layout, slot):
                moved.add(f"cached {token} failed closed")
        # A key that moves is deleted from its old node: that invalidation evicts the token, whose
        # next read may then meet the slot half migrated (TRYAGAIN) and fail closed. Never wrong.
        load.wrong = [line for line in load.wrong if line not in moved]
        assert_sound(load)
        # Both primaries stay subscribed: the new slot layout is followed, no reconnection needed.
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while validator.listener.layout != moved_layout:
            assert time.monotonic() < deadline, "the new slot layout went unnoticed"
            await asyncio.sleep(0.05)
        assert await validator.store.marker_state() == "ok"
        await assert_nothing_lost(cluster.url, validator, tokens)
