"""The store against a real redis-server: layout, one round trip, atomic limits, secrecy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from validator import Admin, InvalidEntry, LimitExceeded, Restrictions, Store
from validator.store.wire import Multiplexer

TOKEN = "tok_live_5f3c9a1e2b"


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Admin]:
    admin = Admin.from_url(redis_url, secret="test-secret")
    await admin.init()
    yield admin
    await admin.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_round_trip_of_a_whole_record(admin: Admin) -> None:
    await admin.set_domains(TOKEN, ["app.example.com", "*.example.org"])
    await admin.set_ips(TOKEN, ["203.0.113.7", "2001:db8::/48"])
    await admin.enable(TOKEN, "domain")
    change = await admin.enable(TOKEN, "ip")
    stored = await admin.get(TOKEN)
    assert stored == change.restrictions
    assert stored == Restrictions(
        domain_enabled=True,
        ip_enabled=True,
        domains=["*.example.org", "app.example.com"],
        ips=["2001:db8::/48", "203.0.113.7"],
        version=4,
    )


async def test_unknown_token_reads_as_none(admin: Admin) -> None:
    assert await admin.get("never-stored") is None


async def test_a_read_is_one_round_trip(
    admin: Admin, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await admin.set_domains(TOKEN, ["app.example.com"])
    store = Store.from_url(redis_url, secret="test-secret")
    await store.read(store.token_hash("warm up: connect and load the script"))
    commands: list[bytes] = []
    writes: list[int] = []
    redis_py_commands: list[object] = []
    send, flush = Multiplexer._send, Multiplexer._flush

    def counting_send(self: Multiplexer, protocol: Any, packed: bytes, replies: int = 1) -> Any:
        commands.append(packed)
        return send(self, protocol, packed, replies)

    def counting_flush(self: Multiplexer, protocol: Any) -> None:
        writes.append(1)
        flush(self, protocol)

    async def redis_py(self: Connection, command: object, check_health: bool = True) -> None:
        redis_py_commands.append(command)

    monkeypatch.setattr(Multiplexer, "_send", counting_send)
    monkeypatch.setattr(Multiplexer, "_flush", counting_flush)
    monkeypatch.setattr(Connection, "send_packed_command", redis_py)
    restrictions = await store.read(store.token_hash(TOKEN))
    monkeypatch.undo()
    await store.close()
    assert restrictions is not None and restrictions.domains == ["app.example.com"]
    assert len(commands) == 1
    # MULTI, HGETALL meta, SMEMBERS domains, SMEMBERS ips, EXEC: written as one.
    assert commands[0].startswith(b"*1\r\n$5\r\nMULTI\r\n") and commands[0].endswith(b"$4\r\nEXEC\r\n")
    assert commands[0].count(b"SMEMBERS") == 2
    assert len(writes) == 1
    assert redis_py_commands == []


@pytest.mark.promise("P-TOKENS-NEVER-IN-CLEAR")
async def test_keys_share_one_hash_tag_and_never_hold_the_token(admin: Admin, raw: aioredis.Redis) -> None:
    tokens = [f"tok_{n}_secretpart" for n in range(20)]
    for token in tokens:
        await admin.add_domains(token, ["app.example.com"])
        await admin.add_ips(token, ["203.0.113.7"])
    keys = [key async for key in raw.scan_iter(match="*", count=1000)]
    assert admin.store.marker_key in keys
    keys.remove(admin.store.marker_key)
    # meta, domains, ips, history, and the ids of the last writes (a retried write is applied
    # once: kept 60 s, see `Store.write`)
    assert len(keys) == 5 * len(tokens)
    for key in keys:
        if key.endswith(":w"):
            assert 0 < await raw.ttl(key) <= 60
    dump = " ".join(keys)
    for token in tokens:
        assert token not in dump
        assert "secretpart" not in dump
        meta, domains, ips = admin.store.keys(admin.store.token_hash(token))
        history = admin.store.history_key(admin.store.token_hash(token))
        assert {meta, domains, ips, history} <= set(keys)
        tags = {key[key.index("{") : key.index("}") + 1] for key in (meta, domains, ips, history)}
        assert len(tags) == 1
    for key in keys:
        if key.endswith(":m"):
            values = await raw.hgetall(key)
            assert not any("secretpart" in v for v in values.values())


@pytest.mark.promise("P-TOKENS-NEVER-IN-CLEAR")
async def test_secret_changes_every_key(redis_url: str) -> None:
    one = Store.from_url(redis_url, secret="one")
    two = Store.from_url(redis_url, secret="two")
    assert one.token_hash(TOKEN) != two.token_hash(TOKEN)
    assert one.token_hash(TOKEN) == Store.from_url(redis_url, secret="one").token_hash(TOKEN)
    for store in (one, two):
        await store.close()


@pytest.mark.promise("P-ENTRY-LIMIT")
async def test_limit_holds_under_50_concurrent_writers(redis_url: str, raw: aioredis.Redis) -> None:
    admins = [Admin.from_url(redis_url, secret="test-secret") for _ in range(50)]
    await admins[0].init()

    async def add(n: int) -> bool:
        try:
            await admins[n].add_domains(TOKEN, [f"site{n}.example.com"])
        except LimitExceeded:
            return False
        return True

    results = await asyncio.wait_for(asyncio.gather(*(add(n) for n in range(50))), timeout=30)
    stored = await admins[0].get(TOKEN)
    assert stored is not None
    assert results.count(True) == 5
    assert len(stored.domains) == 5
    assert await raw.scard(admins[0].store.keys(admins[0].store.token_hash(TOKEN))[1]) == 5
    for admin in admins:
        await admin.close()


@pytest.mark.promise("P-ENTRY-LIMIT")
async def test_limit_error_names_limit_and_what_is_stored(admin: Admin) -> None:
    await admin.set_ips(TOKEN, [f"203.0.113.{n}" for n in range(1, 6)])
    before = await admin.get(TOKEN)
    with pytest.raises(LimitExceeded, match=r"at most 5 entries; it holds 5: 203\.0\.113\.1") as info:
        await admin.add_ips(TOKEN, ["198.51.100.1"])
    assert info.value.limit == 5
    assert len(info.value.stored) == 5
    assert await admin.get(TOKEN) == before


@pytest.mark.promise("P-ENTRY-LIMIT")
@pytest.mark.promise("P-REFUSAL-WRITES-NOTHING")
async def test_set_beyond_limit_is_refused_and_changes_nothing(admin: Admin) -> None:
    await admin.set_domains(TOKEN, ["a.example.com"])
    before = await admin.get(TOKEN)
    with pytest.raises(LimitExceeded):
        await admin.set_domains(TOKEN, [f"s{n}.example.com" for n in range(6)])
    assert await admin.get(TOKEN) == before


@pytest.mark.promise("P-REFUSAL-WRITES-NOTHING")
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda a: a.add_domains(TOKEN, ["ok.example.com", "not a domain"]), id="one bad domain"),
        pytest.param(lambda a: a.add_ips(TOKEN, ["203.0.113.9", "10.0.0.1"]), id="one private ip"),
        pytest.param(lambda a: a.set_ips(TOKEN, ["::1"]), id="loopback"),
        pytest.param(lambda a: a.enable(TOKEN, "everything"), id="unknown switch"),
        pytest.param(lambda a: a.add_domains("", ["ok.example.com"]), id="empty token"),
        pytest.param(lambda a: a.add_domains(TOKEN, []), id="nothing to add"),
    ],
)
async def test_refusals_leave_stored_data_untouched(admin: Admin, call: object) -> None:
    await admin.set_domains(TOKEN, ["app.example.com"])
    await admin.set_ips(TOKEN, ["203.0.113.7"])
    before = await admin.get(TOKEN)
    with pytest.raises(InvalidEntry):
        await call(admin)  # type: ignore[operator]
    assert await admin.get(TOKEN) == before


@pytest.mark.promise("P-STORED-FORM-TOLD")
@pytest.mark.promise("P-DOMAIN-ENTRIES")
async def test_admin_is_told_what_was_stored(admin: Admin) -> None:
    change = await admin.add_domains(TOKEN, ["https://Example.com/path"])
    assert change.restrictions is not None
    assert change.restrictions.domains == ["example.com"]  # docs/behaviour.md: a URL keeps its host alone
    assert len(change.notes) == 1
    assert "'example.com'" in change.notes[0]


async def test_version_grows_only_with_real_changes(admin: Admin) -> None:
    first = await admin.add_domains(TOKEN, ["app.example.com"])
    again = await admin.add_domains(TOKEN, ["app.example.com"])
    assert first.changed and not again.changed
    assert again.restrictions is not None and first.restrictions is not None
    assert again.restrictions.version == first.restrictions.version


@pytest.mark.promise("P-DELETE-FORGETS")
async def test_delete_removes_every_key(admin: Admin, raw: aioredis.Redis) -> None:
    await admin.add_domains(TOKEN, ["app.example.com"])
    await admin.add_ips(TOKEN, ["203.0.113.7"])
    assert await admin.delete(TOKEN)
    assert await admin.get(TOKEN) is None
    assert [key async for key in raw.scan_iter(match="*")] == [admin.store.marker_key]
    assert not await admin.delete(TOKEN)


async def test_key_prefix_is_configurable(redis_url: str, raw: aioredis.Redis) -> None:
    admin = Admin.from_url(redis_url, secret="s", key_prefix="acme:tav:")
    await admin.init()
    await admin.add_domains(TOKEN, ["app.example.com"])
    keys = [key async for key in raw.scan_iter(match="*")]
    assert "acme:tav:marker" in keys
    assert all(key.startswith("acme:tav:{") for key in keys if key != "acme:tav:marker")
    await admin.close()
