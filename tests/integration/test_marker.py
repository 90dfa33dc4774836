"""A store is marked only on purpose (docs/behaviour.md, "Hardened rules"), against a real redis-server.

Only `init`, or the end of a restore, writes the marker. Every admin write on an unmarked store,
or on a store marked for another secret, is refused and writes nothing, so a wiped store keeps
failing closed whatever anybody changes; a restore marks the store after its last record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from tests.redis_cluster import Backend
from validator import Admin, Reason, Restrictions, StoreNotInitialised, StoreUnavailable, Validator
from validator.admin.api import ImportLine, PreparedPut

pytestmark = [pytest.mark.promise("P-MARKER-ON-PURPOSE")]

SECRET = "marker-test-secret"
TOKEN = "tok_marker_do_not_print"
CLIENT_IP = "203.0.113.7"

Write = Callable[[Admin], Awaitable[object]]

# Every admin write, as a user calls it; each must be refused on a store without our marker.
WRITES: list[object] = [
    pytest.param(lambda a: a.add_domains(TOKEN, ["app.example.com"]), id="add domains"),
    pytest.param(lambda a: a.add_ips(TOKEN, [CLIENT_IP]), id="add ips"),
    pytest.param(lambda a: a.remove_ips(TOKEN, [CLIENT_IP]), id="remove ips"),
    pytest.param(lambda a: a.set_domains(TOKEN, ["app.example.com"]), id="set domains"),
    pytest.param(lambda a: a.clear_ips(TOKEN), id="clear ips"),
    pytest.param(lambda a: a.enable(TOKEN, "ip"), id="enable"),
    pytest.param(lambda a: a.disable(TOKEN, "domain"), id="disable"),
    pytest.param(lambda a: a.set_mode(TOKEN, "report"), id="mode"),
    pytest.param(lambda a: a.put(TOKEN, Restrictions(ip_enabled=True, ips=[CLIENT_IP])), id="put"),
    pytest.param(lambda a: a.delete(TOKEN), id="delete"),
    pytest.param(
        lambda a: a.put_many([a.prepare(ImportLine(token=TOKEN, ip_enabled=True, ips=[CLIENT_IP]))]),
        id="import batch",
    ),
]


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Admin]:
    admin = Admin.from_url(redis_url, secret=SECRET)
    yield admin
    await admin.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def restricted(admin: Admin, token: str = TOKEN) -> None:
    await admin.put(token, Restrictions(ip_enabled=True, ips=[CLIENT_IP]))


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_on_a_store_never_initialised_is_refused(
    admin: Admin, raw: aioredis.Redis, write: Write
) -> None:
    with pytest.raises(StoreNotInitialised, match="validator-admin init") as refused:
        await write(admin)
    assert refused.value.state == "missing"
    assert "import --restore" in str(refused.value)
    assert await raw.keys("*") == []


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_after_a_wipe_is_refused_and_does_not_mark_the_store(
    admin: Admin, raw: aioredis.Redis, write: Write
) -> None:
    await admin.init()
    await restricted(admin, "tok_lost_in_the_wipe")
    await raw.flushall()
    with pytest.raises(StoreNotInitialised):
        await write(admin)  # the same admin: the script reads the marker on every write
    assert await raw.keys("*") == []
    assert await admin.store.marker_state() == "missing"


async def test_validators_keep_failing_closed_for_a_lost_token_whatever_is_written(
    redis_url: str, admin: Admin, raw: aioredis.Redis
) -> None:
    await admin.init()
    await restricted(admin, "tok_lost_in_the_wipe")
    async with Validator.from_url(redis_url, secret=SECRET, unknown_token="allow") as validator:
        await raw.flushall()
        await validator.sync()
        with pytest.raises(StoreNotInitialised):
            await admin.add_ips("tok_unrelated", ["198.51.100.1"])
        # Before: that write re-marked the store, and the lost token read as unknown: allowed.
        with pytest.raises(StoreUnavailable):
            await validator.check("tok_lost_in_the_wipe", client_ip="198.51.100.9")


async def test_a_write_on_a_store_of_another_secret_is_refused(
    redis_url: str, admin: Admin, raw: aioredis.Redis
) -> None:
    await admin.init()
    other = Admin.from_url(redis_url, secret="another-secret")
    try:
        with pytest.raises(StoreNotInitialised, match="another secret") as refused:
            await other.add_ips(TOKEN, [CLIENT_IP])
    finally:
        await other.close()
    assert refused.value.state == "mismatch"
    assert await raw.keys("*") == [admin.store.marker_key]


async def test_a_write_on_a_wiped_node_is_refused_on_every_deployment(backend: Backend) -> None:
    admin = Admin.from_url(backend.url, secret=SECRET)
    try:
        await admin.init()
        await restricted(admin)
        for node in backend.write_nodes():
            await node.flushall()
            await node.aclose()
    finally:
        await admin.close()
    # A new admin (as every CLI command is): on a Redis Cluster the marker lives in other slots
    # than the token's keys, and is read before the first write.
    admin = Admin.from_url(backend.url, secret=SECRET)
    try:
        with pytest.raises(StoreNotInitialised):
            await admin.add_ips("tok_unrelated", [CLIENT_IP])
        assert await admin.store.marker_state() == "missing"
        assert await admin.get("tok_unrelated") is None
    finally:
        await admin.close()


def prepared(admin: Admin, count: int) -> list[PreparedPut]:
    return [
        admin.prepare(ImportLine(token=f"tok_restored_{n}", ip_enabled=True, ips=[CLIENT_IP]))
        for n in range(count)
    ]


async def test_a_restore_marks_the_store_after_its_last_record(
    redis_url: str, admin: Admin, raw: aioredis.Redis
) -> None:
    records = prepared(admin, 30)
    batches = [records[n : n + 10] for n in range(0, 30, 10)]
    async with Validator.from_url(redis_url, secret=SECRET, unknown_token="allow") as validator:
        written = 0
        async for changes in admin.restore(batches):
            written += len(changes)
            # No window: until the last record is back, uncached checks fail closed.
            assert await admin.store.marker_state() == "missing"
            await validator.sync()
            with pytest.raises(StoreUnavailable):
                await validator.check("tok_restored_29", client_ip="198.51.100.9")
        assert written == 30
        assert await admin.store.marker_state() == "ok"
        await validator.sync()
        decision = await validator.check("tok_restored_29", client_ip="198.51.100.9")
        assert decision.reason is Reason.IP_NOT_LISTED
    assert len(await raw.keys("tav:{*}:m")) == 30


async def test_a_restore_that_stops_early_leaves_the_store_unmarked(admin: Admin) -> None:
    records = prepared(admin, 20)
    restoring = admin.restore([records[:10], records[10:]])
    assert len(await anext(restoring)) == 10
    await restoring.aclose()  # a failed or interrupted restore
    assert await admin.store.marker_state() == "missing"


async def test_a_restore_into_a_store_of_another_secret_is_refused(
    redis_url: str, admin: Admin, raw: aioredis.Redis
) -> None:
    await admin.init()
    other = Admin.from_url(redis_url, secret="another-secret")
    try:
        with pytest.raises(StoreNotInitialised, match="another secret"):
            async for _ in other.restore([prepared(other, 3)]):
                pass
    finally:
        await other.close()
    assert await raw.keys("*") == [admin.store.marker_key]


async def test_a_restore_into_a_marked_store_is_a_plain_import(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    await admin.init()
    changes = [change async for batch in admin.restore([prepared(admin, 3)]) for change in batch]
    assert [change.changed for change in changes] == [True] * 3
    assert "already initialised" in caplog.text


async def test_a_memory_store_is_marked_when_created() -> None:
    admin = Admin.from_url("memory://marker-test")
    change = await admin.add_ips(TOKEN, [CLIENT_IP])
    assert change.changed
    assert await admin.store.marker_state() == "ok"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("invalidation", [False, True], ids=["no invalidation", "invalidation"])
async def test_a_marker_not_required_is_never_read(
    backend: Backend, invalidation: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`require_marker=False` on a store never initialised decides from the records alone, on
    every deployment, with or without invalidation: the marker is not even read."""
    async with Validator.from_url(
        backend.url, secret=SECRET, require_marker=False, invalidation=invalidation
    ) as validator:

        async def marker_read(*args: object) -> str:
            raise AssertionError("the marker was read")

        monkeypatch.setattr(validator.store, "marker_state", marker_read)
        for n in range(20):  # tokens in many slots (every primary of a cluster)
            decision = await validator.check(f"tok_unmarked_{n}", client_ip=CLIENT_IP)
            assert decision.allowed and decision.reason is Reason.UNKNOWN_TOKEN
        if validator.listener is not None:
            await validator.sync()  # subscribed everywhere: reads take the fast path too
            validator.cache.clear()
            for n in range(20):
                assert (await validator.check(f"tok_unmarked_{n}", client_ip=CLIENT_IP)).allowed
