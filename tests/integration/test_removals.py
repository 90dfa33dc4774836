"""Changing nothing stored creates nothing (docs/behaviour.md, "Hardened rules"), against a real redis-server.

A removal, clear, disable or mode change on a token with no record used to create an empty
record with both switches off: a token that validators deny as unknown became unrestricted.
Such a change now leaves nothing behind and says so; a refused change (over the limit) creates
nothing either. Adding entries, setting a non-empty list, enabling and `put` still create one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
import redis.asyncio as aioredis

from validator import Admin, Change, LimitExceeded, Reason, Restrictions, Validator

pytestmark = [pytest.mark.promise("P-NOTHING-STORED-CREATES-NOTHING")]

SECRET = "removals-test-secret"
TOKEN = "tok_never_stored_do_not_print"
CLIENT_IP = "203.0.113.7"

Op = Callable[[Admin], Awaitable[Change]]

TAKING_AWAY: list[object] = [
    pytest.param(lambda a: a.remove_ips(TOKEN, [CLIENT_IP]), id="ips remove"),
    pytest.param(lambda a: a.remove_domains(TOKEN, ["app.example.com"]), id="domains remove"),
    pytest.param(lambda a: a.clear_ips(TOKEN), id="ips clear"),
    pytest.param(lambda a: a.clear_domains(TOKEN), id="domains clear"),
    pytest.param(lambda a: a.set_ips(TOKEN, []), id="ips set to nothing"),
    pytest.param(lambda a: a.disable(TOKEN, "ip"), id="disable ip"),
    pytest.param(lambda a: a.disable(TOKEN, "domain"), id="disable domain"),
    pytest.param(lambda a: a.set_mode(TOKEN, "enforce"), id="mode enforce"),
    pytest.param(lambda a: a.set_mode(TOKEN, "report"), id="mode report"),
]

CREATING: list[object] = [
    pytest.param(lambda a: a.add_ips(TOKEN, [CLIENT_IP]), Restrictions(ips=[CLIENT_IP]), id="ips add"),
    pytest.param(
        lambda a: a.set_domains(TOKEN, ["app.example.com"]),
        Restrictions(domains=["app.example.com"]),
        id="domains set",
    ),
    pytest.param(lambda a: a.enable(TOKEN, "ip"), Restrictions(ip_enabled=True), id="enable ip"),
    pytest.param(
        lambda a: a.put(TOKEN, Restrictions(domain_enabled=True)), Restrictions(domain_enabled=True), id="put"
    ),
]

# Refused for the limit (5 entries): nothing may be left behind, not even an empty record.
OVER_THE_LIMIT: list[object] = [
    pytest.param(lambda a: a.add_ips(TOKEN, [f"203.0.113.{n}" for n in range(1, 7)]), id="ips add"),
    pytest.param(lambda a: a.set_domains(TOKEN, [f"d{n}.example.com" for n in range(6)]), id="domains set"),
    pytest.param(
        lambda a: a.put(TOKEN, Restrictions(ip_enabled=True, ips=[f"203.0.113.{n}" for n in range(1, 7)])),
        id="put",
    ),
]


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Admin]:
    admin = Admin.from_url(redis_url, secret=SECRET)
    await admin.init()
    yield admin
    await admin.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def denying(redis_url: str, admin: Admin) -> AsyncIterator[Validator]:
    async with Validator.from_url(redis_url, secret=SECRET, unknown_token="deny") as validator:
        yield validator


async def token_keys(raw: aioredis.Redis) -> list[str]:
    return [key async for key in raw.scan_iter(match="tav:{*}*")]


@pytest.mark.parametrize("op", TAKING_AWAY)
async def test_taking_away_from_a_token_without_a_record_changes_nothing_and_says_so(
    admin: Admin, raw: aioredis.Redis, denying: Validator, op: Op
) -> None:
    change = await op(admin)
    assert (change.changed, change.restrictions) == (False, None)
    assert any("nothing is stored" in note for note in change.notes)
    assert await token_keys(raw) == []
    decision = await denying.check(TOKEN, client_ip="198.51.100.9")
    assert (decision.allowed, decision.reason) == (False, Reason.UNKNOWN_TOKEN)


@pytest.mark.parametrize("op", TAKING_AWAY)
async def test_taking_away_from_a_stored_token_still_writes(admin: Admin, op: Op) -> None:
    await admin.put(TOKEN, Restrictions(domain_enabled=True, ip_enabled=True, ips=[CLIENT_IP]))
    change = await op(admin)
    assert change.restrictions is not None
    assert not any("nothing is stored" in note for note in change.notes)


@pytest.mark.parametrize(("op", "stored"), CREATING)
async def test_adding_enabling_and_put_create_a_record(admin: Admin, op: Op, stored: Restrictions) -> None:
    change = await op(admin)
    assert change.changed
    assert await admin.get(TOKEN) == msgspec.structs.replace(stored, version=1)


@pytest.mark.parametrize("op", OVER_THE_LIMIT)
async def test_a_change_refused_for_the_limit_creates_nothing(
    admin: Admin, raw: aioredis.Redis, op: Op
) -> None:
    with pytest.raises(LimitExceeded):
        await op(admin)
    assert await admin.get(TOKEN) is None
    assert await token_keys(raw) == []


async def test_a_removal_racing_a_delete_never_leaves_a_record(admin: Admin) -> None:
    other = Admin.from_url(admin.store.url, secret=SECRET)
    try:
        for n in range(100):
            token = f"tok_race_{n}"
            await admin.add_ips(token, [CLIENT_IP, "198.51.100.1"])
            await asyncio.gather(admin.delete(token), other.remove_ips(token, [CLIENT_IP]))
            assert await admin.get(token) is None, n
    finally:
        await other.close()
