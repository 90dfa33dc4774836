"""Report-only mode, the denial log and the metrics, against a real redis-server."""

from __future__ import annotations

import asyncio
import binascii
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from tests.integration.test_cli_support import SECRET, Cli
from tests.redis_cluster import Backend
from tests.redis_servers import RedisProcess
from validator import Admin, ConfigurationError, Reason, Store, Validator
from validator.metrics import install
from validator.model import Source, decision
from validator.store import fingerprint
from validator.store.denial_streams import SUMMARY_PAIRS, DenialEntry

TOKEN = "tok_live_denials_do_not_print"
CLIENT_IP = "198.51.100.77"
DAY_MS = 24 * 3600 * 1000


async def restricted(validator: Validator, token: str = TOKEN) -> None:
    """Store `token` as IP-restricted to 203.0.113.7 (on an initialised store) and wait for it."""
    admin = Admin(validator.store)
    await admin.init()
    await admin.set_ips(token, ["203.0.113.7"])
    await admin.enable(token, "ip")
    await validator.sync()


@pytest.fixture
async def validator(redis_url: str) -> AsyncIterator[Validator]:
    async with Validator.from_url(redis_url, secret="s", denial_queue_size=100) as validator:
        await restricted(validator)
        yield validator


@pytest.fixture
async def denying(redis_url: str) -> AsyncIterator[Validator]:
    """A validator that denies unknown tokens, with a one-day denial TTL, and TOKEN stored."""
    async with Validator.from_url(
        redis_url, secret=SECRET, unknown_token="deny", denial_ttl=DAY_MS / 1000
    ) as validator:
        await restricted(validator)
        yield validator


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def drained(validator: Validator) -> None:
    """Wait (bounded) until the denial log has written everything queued."""
    assert validator.denial_log is not None
    await asyncio.wait_for(validator.denial_log.flush(), 10)


@pytest.mark.promise("P-DENIAL-LOG")
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


@pytest.mark.promise("P-REPORT-ONLY")
@pytest.mark.promise("P-DENIAL-LOG")
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


@pytest.mark.promise("P-DENIAL-LOG")
@pytest.mark.promise("P-DENIAL-LOG-OFF-PATH")
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


@pytest.mark.promise("P-DELETE-FORGETS")
async def test_delete_removes_the_denials(validator: Validator) -> None:
    admin = Admin(validator.store)
    await validator.check(TOKEN, client_ip=CLIENT_IP)
    await drained(validator)
    assert await admin.denials(TOKEN)
    assert await validator.store.denial_summary(validator.store.token_hash(TOKEN)) is not None
    await admin.delete(TOKEN)
    assert await admin.denials(TOKEN) == []
    assert await validator.store.denial_summary(validator.store.token_hash(TOKEN)) is None


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
    assert fingerprint(validator.store.token_hash(TOKEN)) not in text


# ------------------------------------------------------------------------------ bounded in total


def test_unknown_log_shards_spread_over_the_cluster_slots() -> None:
    # Shard k's hash tag lands in the k-th sixteenth of the slots (CRC16, as Redis Cluster hashes).
    sixteenths = [binascii.crc_hqx(tag.encode(), 0) % 16384 // 1024 for tag in Store.UNKNOWN_SHARD_TAGS]
    assert sixteenths == list(range(16))


@pytest.mark.promise("P-DENIAL-LOG-BOUNDED")
async def test_unknown_tokens_get_no_stream_of_their_own(denying: Validator, raw: aioredis.Redis) -> None:
    store = denying.store
    keys_before = set(await raw.keys("*"))
    tokens = [f"tok_random_{n}_do_not_print" for n in range(300)]
    for token in tokens:
        assert (await denying.check(token, client_ip=CLIENT_IP)).reason is Reason.UNKNOWN_TOKEN
    await drained(denying)
    assert set(await raw.keys("*")) - keys_before <= set(store.unknown_denials_keys())
    entries = await store.unknown_denials(count=1000)
    assert {e["token"] for e in entries} == {fingerprint(store.token_hash(t)) for t in tokens}
    assert {(e["reason"], e["seen"], e["mode"]) for e in entries} == {("unknown_token", CLIENT_IP, "enforce")}
    assert not any("do_not_print" in value for e in entries for value in e.values())


@pytest.mark.promise("P-DENIAL-LOG-BOUNDED")
@pytest.mark.parametrize("kind", ["stored token", "unknown token"])
async def test_every_denial_stream_expires(denying: Validator, raw: aioredis.Redis, kind: str) -> None:
    token = TOKEN if kind == "stored token" else "tok_never_issued_do_not_print"
    store = denying.store
    assert not (await denying.check(token, client_ip=CLIENT_IP)).allowed
    await drained(denying)
    key = (store.denials_key if token == TOKEN else store.unknown_denials_key)(store.token_hash(token))
    assert await raw.xlen(key) == 1
    assert 0 < await raw.pttl(key) <= DAY_MS


@pytest.mark.promise("P-DENIAL-LOG")
async def test_repeats_merge_into_one_entry_with_one_expiry_per_stream(
    denying: Validator, raw: aioredis.Redis
) -> None:
    store, admin = denying.store, Admin(denying.store)
    unknown = "tok_never_issued_do_not_print"
    for token in (TOKEN, unknown):  # cached from here on: the loop below never yields to the writer
        await denying.check(token, client_ip=CLIENT_IP)
    await drained(denying)
    await raw.config_resetstat()
    for _ in range(200):
        for token in (TOKEN, unknown):
            assert not (await denying.check(token, client_ip=CLIENT_IP)).allowed
    assert not (await denying.check(TOKEN, client_ip="198.51.100.78")).allowed  # another request
    await drained(denying)
    stats: dict[str, Any] = await raw.info("commandstats")
    # One batch: one entry per distinct request, one expiry per stream; and the stored token's
    # summary, one script call, which sets its own expiry (the third PEXPIRE).
    assert stats["cmdstat_xadd"]["calls"] == 3
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_pexpire"]["calls"] == 2 + 1
    assert denying.denial_log is not None
    assert denying.denial_log.recorded == 2 + 401
    other, merged, single = await admin.denials(TOKEN)  # newest (last denial) first
    assert (merged["seen"], int(merged["count"])) == (CLIENT_IP, 200)
    assert int(merged["first"]) <= int(merged["at"])
    assert (other["seen"], "count" in other) == ("198.51.100.78", False)
    assert ("count" in single, "first" in single) == (False, False)  # the first one, alone in its batch
    (shared, alone) = [
        e for e in await store.unknown_denials() if e["token"] == fingerprint(store.token_hash(unknown))
    ]
    assert (shared["reason"], int(shared["count"]), "count" in alone) == ("unknown_token", 200, False)
    # `validator-admin denials` shows how many each entry holds.
    cli = Cli(denying.store.url)
    listed = (await asyncio.to_thread(cli, "denials", TOKEN, "--json")).json()["denials"]
    assert [(d["count"], "first_time" in d) for d in listed] == [(1, False), (200, True), (1, False)]
    table = (await asyncio.to_thread(cli, "denials", TOKEN)).out
    assert "x200" in table
    assert "3 most recent entries (202 denials)" in table


@pytest.mark.promise("P-DENIAL-LOG")
async def test_a_tokens_denials_include_those_it_got_while_unknown(denying: Validator) -> None:
    store, admin = denying.store, Admin(denying.store)
    token = "tok_issued_later_do_not_print"
    shard = store.unknown_denials_key(store.token_hash(token))
    neighbour = next(
        t for n in range(1000) if store.unknown_denials_key(store.token_hash(t := f"tok_{n}")) == shard
    )
    for unknown in (token, neighbour):
        assert (await denying.check(unknown, client_ip=CLIENT_IP)).reason is Reason.UNKNOWN_TOKEN
    await drained(denying)
    await restricted(denying, token)
    assert (await denying.check(token, client_ip=CLIENT_IP)).reason is Reason.IP_NOT_LISTED
    await drained(denying)
    denials = await admin.denials(token)
    assert [d["reason"] for d in denials] == ["ip_not_listed", "unknown_token"]
    assert all("token" not in d for d in denials)
    assert [d["reason"] for d in await admin.denials(token, count=1)] == ["ip_not_listed"]


@pytest.mark.promise("P-DENIAL-LOG")
async def test_denial_log_on_every_deployment(backend: Backend) -> None:
    async with Validator.from_url(backend.url, secret=SECRET, unknown_token="deny") as validator:
        store = validator.store
        await restricted(validator)
        tokens = [f"tok_spread_{n}_do_not_print" for n in range(60)]
        for token in (TOKEN, *tokens):
            assert not (await validator.check(token, client_ip=CLIENT_IP)).allowed
        await drained(validator)
        assert [d["reason"] for d in await Admin(store).denials(TOKEN)] == ["ip_not_listed"]
        listed = await store.unknown_denials(count=100)
        assert {e["token"] for e in listed} == {fingerprint(store.token_hash(t)) for t in tokens}
    for node in backend.write_nodes():
        # On a cluster the shards spread over every primary; everywhere every stream expires.
        keys = [key async for key in node.scan_iter(match="*-denials:*")]
        assert any(":unknown:" in key for key in keys)
        assert all([await node.pttl(key) > 0 for key in keys])
        await node.aclose()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"denial_ttl": 0.0}, "denial_ttl must be positive"),
        ({"denial_ttl": -1.0}, "denial_ttl must be positive"),
        ({"denial_ttl": float("nan")}, "denial_ttl must be positive"),
        ({"denial_unknown_length": 0}, "unknown-log sizes must be at least 1"),
    ],
)
async def test_denial_log_settings_are_checked(settings: Any, message: str) -> None:
    store = Store.from_url("memory://denial-settings")
    with pytest.raises(ConfigurationError, match=message):
        Validator(store, **settings)
    await store.close()


@pytest.mark.promise("P-TOKENS-NEVER-IN-CLEAR")
def test_cli_lists_unknown_denials_by_fingerprint(redis_url: str) -> None:
    tokens = [f"tok_cli_unknown_{n}_do_not_print" for n in range(3)]

    async def denied() -> list[str]:
        async with Validator.from_url(redis_url, secret=SECRET, unknown_token="deny") as validator:
            await Admin(validator.store).init()
            for token in tokens:
                await validator.check(token, origin="https://app.example.com")
            await drained(validator)
            return [fingerprint(validator.store.token_hash(token)) for token in tokens]

    fingerprints = asyncio.run(denied())
    cli = Cli(redis_url)
    listed = cli("denials", "--unknown", "--json")
    assert listed.code == 0
    assert {d["token"] for d in listed.json()["denials"]} == set(fingerprints)
    table = cli("denials", "--unknown")
    assert all(name in table.out for name in fingerprints)
    assert "do_not_print" not in listed.out + table.out
    own = cli("denials", tokens[0], "--json").json()["denials"]
    assert [(d["reason"], d["seen"]) for d in own] == [("unknown_token", "app.example.com")]
    for usage in (("denials",), ("denials", tokens[0], "--unknown")):
        refused = cli(*usage)
        assert (refused.code, refused.out) == (2, "")
        assert "--unknown" in refused.err


# ------------------------------------------------------------------------------ floods cost little


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "url",
    [
        "https://evil.test",
        "https://evil.test:8443/path?q=1",
        "http://EVIL.test./",
        "https://user@x.example@evil.test:443",
        "custom+scheme://evil.test",
        "https://evil.test:99999",
        "https://evil.test:0",
        "https://bücher.example",
    ],
)
def test_the_origin_recorded_is_origin_of(url: str) -> None:
    # The writer builds the origin from the remembered host, not from a second parse: the same text.
    from validator.denials import _origin
    from validator.rules.request import origin_of, request_host

    parts, host = origin_of(url), request_host(url)
    assert host is not None
    expected = "" if parts is None else f"{parts[0]}://{parts[1]}" + (f":{parts[2]}" if parts[2] else "")
    assert _origin(url, host) == expected


@pytest.mark.promise("P-DENIAL-LOG-OFF-PATH")
@pytest.mark.timeout(10)
def test_log_lines_are_rate_limited_to_a_burst_then_the_rate() -> None:
    from validator.denials import RateLimiter

    limiter = RateLimiter(10.0, burst=20)
    start = time.monotonic()  # the bucket is full
    assert [limiter.allow(start) for _ in range(25)] == [True] * 20 + [False] * 5
    assert limiter.suppressed == 5
    assert limiter.allow(start + 0.05) is False  # half a token since
    assert limiter.allow(start + 0.1) is True
    assert [limiter.allow(start + 100) for _ in range(21)] == [True] * 20 + [
        False
    ]  # never more than the burst


@pytest.mark.promise("P-DENIAL-LOG-BOUNDED")
@pytest.mark.timeout(60)
async def test_a_flood_of_invented_tokens_keeps_the_newest_of_each_shard(
    denying: Validator, raw: aioredis.Redis
) -> None:
    store, log = denying.store, denying.denial_log
    assert log is not None
    tokens = [f"tok_flood_{n}_do_not_print" for n in range(4000)]
    hashes = [store.token_hash(token) for token in tokens]
    await raw.config_resetstat()
    for token_hash in hashes:  # one batch: recorded without yielding, as a busy loop would
        log.record(token_hash, decision(False, Reason.UNKNOWN_TOKEN, Source.BACK_END), None, CLIENT_IP)
    await drained(denying)
    assert (log.recorded, log.dropped, log.failed) == (4000, 0, 0)
    stats: dict[str, Any] = await raw.info("commandstats")
    shard_length = -(-denying.settings["denial_unknown_length"] // len(store.UNKNOWN_SHARD_TAGS))
    # Only what the capped shards keep is written: the newest `shard_length` of each.
    assert stats["cmdstat_xadd"]["calls"] == 16 * shard_length
    newest = {fingerprint(h) for h in hashes[-1000:]}
    listed = await store.unknown_denials(count=2000)
    kept = {e["token"] for e in listed}
    assert len(kept) >= 16 * shard_length - 16
    assert kept <= {fingerprint(h) for h in hashes}
    # Every shard holds its newest: of the last 1,000 denials, those of each shard's newest 63.
    by_shard: dict[str, list[str]] = {}
    for h in hashes:
        by_shard.setdefault(store.unknown_denials_key(h), []).append(fingerprint(h))
    assert all(set(names[-shard_length:]) <= kept for names in by_shard.values())
    assert newest & kept


@pytest.mark.timeout(60)
async def test_denials_fail_while_redis_is_down_and_are_written_again_after() -> None:
    server = RedisProcess()
    server.start()
    try:
        async with Validator.from_url(
            server.url, secret=SECRET, timeout=0.2, connect_timeout=0.2
        ) as validator:
            log = validator.denial_log
            assert log is not None
            await restricted(validator)
            assert not (await validator.check(TOKEN, client_ip=CLIENT_IP)).allowed
            await drained(validator)
            assert (log.recorded, log.failed) == (1, 0)
            server.kill()
            for _ in range(300):  # cached: decided without Redis, recorded for the log
                assert validator.check_cached(TOKEN, client_ip=CLIENT_IP) is not None
            await drained(validator)
            assert (log.recorded, log.failed, log.dropped) == (1, 300, 0)
            server.start()  # empty: the writer reconnects, whatever the checks make of it
            token_hash = validator.store.token_hash(TOKEN)
            log.record(
                token_hash, decision(False, Reason.IP_NOT_LISTED, Source.BACK_END), None, "198.51.100.78"
            )
            await drained(validator)
            assert (log.recorded, log.failed) == (2, 300)
            raw = aioredis.Redis.from_url(server.url, decode_responses=True)
            key = validator.store.denials_key(token_hash)
            assert await raw.xlen(key) == 1
            assert await raw.pttl(key) > 0
            await raw.aclose()
    finally:
        server.cleanup()


@pytest.mark.timeout(30)
async def test_a_refused_xadd_fails_only_its_own_denials(denying: Validator, raw: aioredis.Redis) -> None:
    """The batch goes out as one packed request; an error reply (here WRONGTYPE: the token's
    stream key holds a string) counts that stream's denials as failed, and no others."""
    store, log = denying.store, denying.denial_log
    assert log is not None
    token_hash = store.token_hash(TOKEN)
    await raw.set(store.denials_key(token_hash), "not a stream")
    unknown = [store.token_hash(f"tok_refused_{n}_do_not_print") for n in range(3)]
    for _ in range(2):  # one batch: recorded without yielding
        log.record(token_hash, decision(False, Reason.IP_NOT_LISTED, Source.BACK_END), None, CLIENT_IP)
    for other in unknown:
        log.record(other, decision(False, Reason.UNKNOWN_TOKEN, Source.BACK_END), None, CLIENT_IP)
    await drained(denying)
    assert (log.recorded, log.failed, log.dropped) == (3, 2, 0)
    assert await raw.get(store.denials_key(token_hash)) == "not a stream"
    listed = await store.unknown_denials(count=10)
    assert {e["token"] for e in listed} == {fingerprint(h) for h in unknown}


def _pair(client: str, host: str, at: float) -> DenialEntry:
    origin = f"https://{host}"
    return (TOKEN_HASH, at, 1, at, ("front_end", host, "domain_not_listed", "report", origin, "0000", client))


TOKEN_HASH = "h" * 22


@pytest.mark.promise("P-SUGGEST-FLOOD-RESISTANT")
async def test_the_summary_keeps_every_clients_pairs_under_a_flood_from_one(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """The summary (`summary.lua`) is bounded (SUMMARY_PAIRS pairs), and a client spraying
    distinct values only replaces pairs of its own once it holds the most: two pairs of two
    other clients, written before and in the middle of 3,000 distinct values from one client,
    stay; the flooder's let-go pairs are counted."""
    store = Store.from_url(redis_url, secret=SECRET)
    try:
        write = functools.partial(store.append_denials, max_length=1000, unknown_length=1000, ttl=60.0)
        now = time.time()
        await write([_pair("198.51.100.1", "app.example.com", now)])
        for batch in range(10):
            flood = [_pair("192.0.2.66", f"x{batch}-{n}.attacker.example.net", now) for n in range(300)]
            if batch == 5:
                flood.insert(290, _pair("198.51.100.2", "shop.example.com", now))
            await write(flood)
        found = await store.denial_summary(TOKEN_HASH)
        assert found is not None
        pairs, clients = found
        assert len(pairs) == SUMMARY_PAIRS
        kept = {(p["client"], p["seen"]) for p in pairs}
        assert {("198.51.100.1", "app.example.com"), ("198.51.100.2", "shop.example.com")} <= kept
        assert clients["192.0.2.66"] == (SUMMARY_PAIRS - 2, 3000 - (SUMMARY_PAIRS - 2))
        assert clients["198.51.100.1"] == (1, 0)
        key = store.denial_summary_key(TOKEN_HASH)
        assert 0 < await raw.pttl(key) <= 60_000
        assert (await raw.memory_usage(key) or 0) < 64 * 1024
    finally:
        await store.close()


async def test_a_summary_that_cannot_be_written_loses_no_denial(
    validator: Validator, raw: aioredis.Redis
) -> None:
    """The summary's script failing (here its key holds a string: WRONGTYPE) costs only the
    summary: the stream gets every denial, and the writer goes on."""
    store = validator.store
    await restricted(validator)
    await raw.set(store.denial_summary_key(store.token_hash(TOKEN)), "not a hash")
    for _ in range(2):
        assert not (await validator.check(TOKEN, client_ip=CLIENT_IP)).allowed
        await drained(validator)
    assert len(await Admin(store).denials(TOKEN)) == 2
    assert validator.denial_log is not None and validator.denial_log.failed == 0
