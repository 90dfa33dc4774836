"""The key behaviours on every deployment: one redis-server, a Sentinel-managed master, and a
Redis Cluster of three primaries (real processes, see tests/redis_cluster.py).

Decisions, the entry limit under concurrent writers, single flight, invalidation (by the admin
API and by a raw client, on every primary), the wiped-store marker, import and export.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from tests.redis_cluster import Backend
from validator import Admin, LimitExceeded, Reason, Restrictions, StoreUnavailable, Validator
from validator.admin.api import ImportLine
from validator.store.cluster import ClusterWires
from validator.store.sentinel import SentinelWire
from validator.store.wire import SingleWire

SECRET = "backend-secret"
TOKEN = "tok_live_5f3c9a1e2b"
CLIENT_IP = "203.0.113.7"
# Enough tokens that, on a cluster, every primary holds some (each gets about a third).
SPREAD = 60


async def read_calls(backend: Backend) -> int:
    """Reads (EXEC of the read transaction, EVALSHA of the read script) counted by every write
    node since the last reset, summed."""
    total = 0
    for client in backend.write_nodes():
        stats = await client.info("commandstats")
        total += sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("exec", "evalsha"))
        await client.aclose()
    return total


async def reset_stats(backend: Backend) -> None:
    for client in backend.write_nodes():
        await client.config_resetstat()
        await client.aclose()


async def node_of(backend: Backend, key: str) -> int:
    """The port of the write node holding `key`."""
    for client in backend.write_nodes():
        port = client.connection_pool.connection_kwargs["port"]
        try:
            found = await client.exists(key)
        except ResponseError:  # MOVED: a cluster primary that does not serve the key's slot
            found = 0
        finally:
            await client.aclose()
        if found:
            return int(port)
    raise AssertionError(f"{key} is on no write node")


@pytest.fixture
async def validator(store_url: str) -> AsyncIterator[Validator]:
    async with Validator.from_url(store_url, secret=SECRET, topology_interval=0.5) as validator:
        await Admin(validator.store).init()
        yield validator


@pytest.fixture
async def admin(store_url: str) -> AsyncIterator[Admin]:
    admin = Admin.from_url(store_url, secret=SECRET)
    yield admin
    await admin.close()


async def test_listener_subscribes_to_every_write_node(backend: Backend, validator: Validator) -> None:
    assert validator.listener is not None
    assert validator.listener.connected.is_set()
    expected = {f"127.0.0.1:{port}" for port in backend.write_ports()}
    if backend.kind == "standalone":
        assert list(validator.listener.nodes) == ["server"]
    elif backend.kind == "sentinel":
        assert set(validator.listener.nodes) == expected
    else:
        # Primaries that serve no slot (yet: a new primary importing its first slot, or a replica
        # before its first replication) are listened to as well, since keys may be written there.
        serving = {node for node, ranges in validator.listener.nodes.items() if ranges}
        assert serving == expected


@pytest.mark.promise("P-DECISION-TABLE")
async def test_decisions_follow_stored_restrictions(admin: Admin, validator: Validator) -> None:
    await admin.set_domains(TOKEN, ["app.example.com"])
    await admin.set_ips(TOKEN, ["203.0.113.0/24"])
    await admin.enable(TOKEN, "domain")
    await admin.enable(TOKEN, "ip")
    assert (await validator.check(TOKEN, origin="https://app.example.com")).reason is Reason.DOMAIN_LISTED
    assert (await validator.check(TOKEN, origin="https://evil.test")).reason is Reason.DOMAIN_NOT_LISTED
    assert (await validator.check(TOKEN, client_ip="203.0.113.99")).reason is Reason.IP_LISTED
    assert (await validator.check(TOKEN, client_ip="198.51.100.1")).reason is Reason.IP_NOT_LISTED
    assert (await validator.check("never-stored", client_ip="198.51.100.1")).reason is Reason.UNKNOWN_TOKEN


async def test_one_token_lives_in_one_slot_on_one_node(backend: Backend, admin: Admin) -> None:
    await admin.init()
    await admin.set_domains(TOKEN, ["app.example.com"])
    await admin.set_ips(TOKEN, [CLIENT_IP])
    token_hash = admin.store.token_hash(TOKEN)
    keys = [*admin.store.keys(token_hash), admin.store.history_key(token_hash)]
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert len({await node_of(backend, key) for key in keys}) == 1


@pytest.mark.timeout(60)
@pytest.mark.promise("P-ENTRY-LIMIT")
async def test_limit_holds_under_50_concurrent_writers(store_url: str, admin: Admin) -> None:
    await admin.init()
    admins = [Admin.from_url(store_url, secret=SECRET) for _ in range(50)]

    async def add(n: int) -> bool:
        try:
            await admins[n].add_domains(TOKEN, [f"site{n}.example.com"])
        except LimitExceeded:
            return False
        return True

    try:
        results = await asyncio.wait_for(asyncio.gather(*(add(n) for n in range(50))), timeout=30)
        stored = await admins[0].get(TOKEN)
    finally:
        for admin in admins:
            await admin.close()
    assert results.count(True) == 5
    assert stored is not None and len(stored.domains) == 5


@pytest.mark.promise("P-SINGLE-FLIGHT")
async def test_single_flight_1000_concurrent_checks_one_read(
    backend: Backend, admin: Admin, validator: Validator
) -> None:
    await admin.set_ips(TOKEN, [CLIENT_IP])
    await admin.enable(TOKEN, "ip")
    await validator.sync()
    # Connect to every node.
    for n in range(SPREAD):
        await validator.check(f"warm-up-{n}")
    await reset_stats(backend)
    decisions = await asyncio.wait_for(
        asyncio.gather(*(validator.check(TOKEN, client_ip=CLIENT_IP) for _ in range(1000))), timeout=30
    )
    assert all(d.allowed and d.reason is Reason.IP_LISTED for d in decisions)
    assert await read_calls(backend) == 1


@pytest.mark.promise("P-SYNC")
@pytest.mark.promise("P-INVALIDATION")
async def test_admin_changes_reach_the_cache_on_every_node(
    backend: Backend, admin: Admin, validator: Validator
) -> None:
    tokens = [f"tok_spread_{n}" for n in range(SPREAD)]
    for token in tokens:
        await admin.set_ips(token, [CLIENT_IP])
        await admin.enable(token, "ip")
    nodes = {await node_of(backend, admin.store.keys(admin.store.token_hash(t))[0]) for t in tokens}
    assert nodes == set(backend.write_ports())  # on a cluster: every primary holds some
    await validator.sync()
    for token in tokens:
        assert (await validator.check(token, client_ip=CLIENT_IP)).allowed
    for token in tokens:
        await admin.set_ips(token, ["198.51.100.1"])
    await validator.sync()
    for token in tokens:
        assert validator.check_cached(token, client_ip=CLIENT_IP) is None
        assert not (await validator.check(token, client_ip=CLIENT_IP)).allowed


@pytest.mark.promise("P-SYNC")
@pytest.mark.promise("P-INVALIDATION")
async def test_change_by_a_raw_client_reaches_the_cache(
    backend: Backend, admin: Admin, validator: Validator
) -> None:
    await admin.set_ips(TOKEN, [CLIENT_IP])
    await admin.enable(TOKEN, "ip")
    await validator.sync()
    assert (await validator.check(TOKEN, client_ip=CLIENT_IP)).allowed
    _, _, ips_key = admin.store.keys(admin.store.token_hash(TOKEN))
    port = await node_of(backend, ips_key)
    raw = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    await raw.srem(ips_key, CLIENT_IP)
    await raw.aclose()
    await validator.sync()
    assert not (await validator.check(TOKEN, client_ip=CLIENT_IP)).allowed


async def serving(backend: Backend, key: str) -> int:
    """The port of the write node that serves `key`'s slot (whether the key exists or not)."""
    for client in backend.write_nodes():
        port = client.connection_pool.connection_kwargs["port"]
        try:
            await client.exists(key)
        except ResponseError:  # MOVED: a cluster primary that does not serve the key's slot
            continue
        finally:
            await client.aclose()
        return int(port)
    raise AssertionError(f"no write node serves {key}")


@pytest.mark.promise("P-WIPED-STORE-FAILS-CLOSED")
async def test_flushing_one_node_fails_closed_until_init(
    backend: Backend, admin: Admin, validator: Validator
) -> None:
    """Only the tokens of the flushed node fail closed (on a Cluster the other primaries' tokens
    are decided as usual), until `init`."""
    tokens = [f"tok_flush_{n}" for n in range(SPREAD)]
    for token in tokens:
        await admin.set_ips(token, ["198.51.100.1"])
        await admin.enable(token, "ip")
    await validator.sync()
    assert await admin.store.marker_state() == "ok"
    victim = backend.write_nodes()[-1]
    victim_port = victim.connection_pool.connection_kwargs["port"]
    await victim.flushall()
    await victim.aclose()
    await validator.sync()
    assert await admin.store.marker_state() == "missing"
    # Tokens never cached: those in the wiped node's slots may have lost a record, so none is trusted.
    lost, elsewhere = None, None
    for n in range(200):
        token = f"tok_never_cached_{n}"
        port = await serving(backend, admin.store.keys(admin.store.token_hash(token))[0])
        if port == victim_port:
            lost = lost or token
        else:
            elsewhere = elsewhere or token
        if lost and (elsewhere or backend.kind != "cluster"):
            break
    assert lost is not None
    with pytest.raises(StoreUnavailable):
        await validator.check(lost, client_ip=CLIENT_IP)
    if backend.kind == "cluster":
        assert elsewhere is not None
        decision = await validator.check(elsewhere, client_ip=CLIENT_IP)
        assert decision.reason is Reason.UNKNOWN_TOKEN
    assert await admin.init()
    assert await admin.store.marker_state() == "ok"
    decision = await validator.check(lost, client_ip=CLIENT_IP)
    assert decision.reason is Reason.UNKNOWN_TOKEN


@pytest.mark.promise("P-MARKER-ON-PURPOSE")
async def test_marker_of_another_secret_is_refused(store_url: str, admin: Admin) -> None:
    assert await admin.init()
    assert not await admin.init()
    other = Admin.from_url(store_url, secret="another-secret")
    try:
        assert await other.store.marker_state() == "mismatch"
        with pytest.raises(Exception, match="another secret"):
            await other.init()
    finally:
        await other.close()


async def test_import_and_export_spread_over_every_node(backend: Backend, admin: Admin) -> None:
    prepared = [
        admin.prepare(
            ImportLine(
                token=f"tok_import_{n}",
                domain_enabled=True,
                domains=[f"app{n}.example.com"],
                ip_enabled=n % 2 == 0,
                ips=[f"203.0.113.{n % 250 + 1}"],
            )
        )
        for n in range(300)
    ]
    await admin.init()
    changes = await admin.put_many(prepared)
    assert all(change.changed for change in changes)
    per_node = []
    for client in backend.write_nodes():
        per_node.append(len([key async for key in client.scan_iter(match="tav:{*}:m", count=1000)]))
        await client.aclose()
    assert sum(per_node) == 300
    assert all(count > 0 for count in per_node)
    exported = [record async for record in admin.export(batch_size=64)]
    assert [r.hash for r in exported] == sorted(p.token_hash for p in prepared)
    by_hash = {p.token_hash: p.restrictions for p in prepared}
    for record in exported:
        want = by_hash[record.hash]
        assert (record.domains, record.ips, record.ip_enabled) == (want.domains, want.ips, want.ip_enabled)
    # Re-importing the same records changes nothing.
    assert not any(change.changed for change in await admin.put_many(prepared))


@pytest.mark.promise("P-DELETE-FORGETS")
async def test_delete_removes_every_key_of_the_token(backend: Backend, admin: Admin) -> None:
    await admin.init()
    await admin.add_domains(TOKEN, ["app.example.com"])
    await admin.add_ips(TOKEN, [CLIENT_IP])
    assert await admin.get(TOKEN) == Restrictions(domains=["app.example.com"], ips=[CLIENT_IP], version=2)
    assert await admin.delete(TOKEN)
    assert await admin.get(TOKEN) is None
    leftovers = []
    for client in backend.write_nodes():
        leftovers += [key async for key in client.scan_iter(match="tav:{*}*")]
        await client.aclose()
    assert leftovers == []


@pytest.mark.promise("P-DENIAL-LOG")
async def test_a_recorded_denial_does_not_evict_the_token(admin: Admin, validator: Validator) -> None:
    await admin.set_ips(TOKEN, [CLIENT_IP])
    await admin.enable(TOKEN, "ip")
    await validator.sync()
    assert validator.denial_log is not None
    assert not (await validator.check(TOKEN, client_ip="198.51.100.1")).allowed
    for _ in range(500):  # the denial log writes in the background
        if validator.denial_log.recorded:
            break
        await asyncio.sleep(0.01)
    assert validator.denial_log.recorded == 1
    await validator.sync()  # the denial stream's own invalidation has arrived
    assert validator.check_cached(TOKEN, client_ip="198.51.100.1") is not None


async def test_misses_read_on_multiplexed_connections_to_every_write_node(
    backend: Backend, admin: Admin, validator: Validator
) -> None:
    tokens = await _spread_ip_tokens(admin)
    await validator.sync()
    # The listener has told the store the layout (or master); a first read per node connects.
    for token in tokens:
        assert (await validator.check(token, client_ip=CLIENT_IP)).reason is Reason.IP_LISTED
    validator.cache.clear()
    decisions = await asyncio.wait_for(
        asyncio.gather(*(validator.check(token, client_ip="198.51.100.1") for token in tokens)), timeout=30
    )
    assert all(d.reason is Reason.IP_NOT_LISTED for d in decisions)
    wires = validator.store._wires
    if isinstance(wires, ClusterWires):
        connections = list(wires._nodes.values())
    else:
        assert isinstance(wires, SingleWire | SentinelWire)
        connection = wires.multiplexer if isinstance(wires, SingleWire) else wires._wire
        assert connection is not None
        connections = [connection]
    assert {wire._port for wire in connections if wire._protocol is not None} == set(backend.write_ports())


@pytest.mark.parametrize("backend", ["cluster"], indirect=True)
async def test_cluster_reads_on_a_stale_route_follow_moved(
    backend: Backend, admin: Admin, validator: Validator
) -> None:
    tokens = await _spread_ip_tokens(admin)
    await validator.sync()
    for token in tokens:
        await validator.check(token, client_ip=CLIENT_IP)
    wires = validator.store._wires
    assert isinstance(wires, ClusterWires)
    # As after a resharding the listener has not seen yet: every slot routed to one primary.
    wrong = next(iter(wires._nodes.values()))
    wires._by_slot = [wrong] * len(wires._by_slot)
    validator.cache.clear()
    for token in tokens:
        assert (await validator.check(token, client_ip=CLIENT_IP)).reason is Reason.IP_LISTED
        assert (await validator.check(token, client_ip="198.51.100.1")).reason is Reason.IP_NOT_LISTED
    # The MOVED replies put each token's slot back on its primary.
    hashes = [validator.store.token_hash(token) for token in tokens]
    assert len({id(wires.for_tag(h)) for h in hashes}) == len(backend.write_ports())
    validator.cache.clear()
    assert (await validator.check(tokens[0], client_ip=CLIENT_IP)).reason is Reason.IP_LISTED


async def _spread_ip_tokens(admin: Admin) -> list[str]:
    """SPREAD tokens (so some on every node), each allowing CLIENT_IP only."""
    tokens = [f"{TOKEN}-{n}" for n in range(SPREAD)]
    lines = [ImportLine(token=token, ip_enabled=True, ips=[CLIENT_IP]) for token in tokens]
    await admin.put_many([admin.prepare(line) for line in lines])
    return tokens
