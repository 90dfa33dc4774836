"""A lifecycle nobody has to remember: a validator starts itself on first use, and the middleware
starts and closes it with the ASGI lifespan (real redis-server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from validator import Admin, Reason, Restrictions, Validator
from validator.web.middleware import Message, Receive, Scope, Send, TokenAccessMiddleware

pytestmark = [pytest.mark.promise("P-LIFECYCLE")]

TOKEN = "tok_lifecycle_3b1f"
LISTED = "203.0.113.7"
SECRET = "lifecycle-secret"


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Admin]:
    admin = Admin.from_url(redis_url, secret=SECRET)
    await admin.init()
    await admin.put(TOKEN, Restrictions(domain_enabled=False, ip_enabled=True, domains=[], ips=[LISTED]))
    yield admin
    await admin.close()


async def propagation_seconds(admin: Admin, validator: Validator, limit: float = 5.0) -> float:
    """Remove LISTED, and time until `validator` denies it (its cache served it before)."""
    assert (await validator.check(TOKEN, client_ip=LISTED)).allowed
    assert validator.check_cached(TOKEN, client_ip=LISTED) is not None, "not cached: nothing to measure"
    started = time.monotonic()
    await admin.remove_ips(TOKEN, [LISTED])
    while (await validator.check(TOKEN, client_ip=LISTED)).allowed:
        assert time.monotonic() - started < limit, "the change never reached the validator"
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - started
    await admin.add_ips(TOKEN, [LISTED])
    await validator.sync()  # the re-add has reached it before the next measurement
    return elapsed


@pytest.mark.timeout(60)
async def test_a_never_connected_validator_sees_changes_as_fast_as_a_connected_one(
    redis_url: str, admin: Admin
) -> None:
    implicit = Validator.from_url(redis_url, secret=SECRET, incoherent_ttl=30.0)
    explicit = Validator.from_url(redis_url, secret=SECRET, incoherent_ttl=30.0)
    await explicit.connect()
    try:
        # The first check starts it; wait for its invalidation link as a user's traffic would.
        await implicit.check("another-token", client_ip=LISTED)
        assert implicit.listener is not None
        await asyncio.wait_for(implicit.listener.connected.wait(), 5)
        # incoherent_ttl is 30 s: only an invalidation can make these changes visible in time.
        implicit_times = [await propagation_seconds(admin, implicit) for _ in range(3)]
        explicit_times = [await propagation_seconds(admin, explicit) for _ in range(3)]
    finally:
        await implicit.close()
        await explicit.close()
    # Both are invalidations (milliseconds); neither waited for an expiry.
    assert max(implicit_times) < 2.0, implicit_times
    assert max(explicit_times) < 2.0, explicit_times


@pytest.mark.timeout(60)
async def test_a_thousand_concurrent_first_checks_start_it_once(redis_url: str, admin: Admin) -> None:
    validator = Validator.from_url(redis_url, secret=SECRET)
    try:
        decisions = await asyncio.gather(*(validator.check(TOKEN, client_ip=LISTED) for _ in range(1000)))
        assert all(d.reason is Reason.IP_LISTED for d in decisions)
        assert validator.store.local_listeners.count(validator.cache.invalidate) == 1
        assert validator.listener is not None
        await asyncio.wait_for(validator.listener.connected.wait(), 5)
        await validator.sync()  # the barrier works: the listener was started, and once
    finally:
        await validator.close()


@pytest.mark.timeout(30)
async def test_close_then_use_starts_again(redis_url: str, admin: Admin) -> None:
    validator = Validator.from_url(redis_url, secret=SECRET)
    await validator.check(TOKEN, client_ip=LISTED)
    await validator.close()
    assert (await validator.check("yet-another", client_ip=LISTED)).allowed
    assert validator.listener is not None
    await asyncio.wait_for(validator.listener.connected.wait(), 5)
    await validator.close()


class LifespanApp:
    """An app with its own lifespan, recording what it received."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            self.received.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


@pytest.mark.timeout(30)
async def test_the_middleware_starts_and_closes_the_validator_with_the_lifespan(
    redis_url: str, admin: Admin
) -> None:
    validator = Validator.from_url(redis_url, secret=SECRET)
    inner = LifespanApp()
    app = TokenAccessMiddleware(inner, validator=validator)
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    running = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, to_app.get, from_app.put)
    )
    await to_app.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(from_app.get(), 5))["type"] == "lifespan.startup.complete"
    assert validator.listener is not None
    await asyncio.wait_for(validator.listener.connected.wait(), 5)  # started before any request

    await to_app.put({"type": "lifespan.shutdown"})
    assert (await asyncio.wait_for(from_app.get(), 5))["type"] == "lifespan.shutdown.complete"
    await asyncio.wait_for(running, 5)
    # The app kept its own lifespan, and the validator was closed before the server was told.
    assert inner.received == ["lifespan.startup", "lifespan.shutdown"]
    assert not validator.listener.connected.is_set()
    assert validator.cache.invalidate not in validator.store.local_listeners


@pytest.mark.timeout(90)
async def test_a_closed_validator_reads_and_listens_again_on_every_deployment(store_url: str) -> None:
    # A module-level validator behind the middleware is closed by every lifespan shutdown (a
    # test client per test, a server reload): the next startup must find it working.
    admin = Admin.from_url(store_url, secret=SECRET)
    await admin.init()
    await admin.put(TOKEN, Restrictions(domain_enabled=False, ip_enabled=True, domains=[], ips=[LISTED]))
    validator = Validator.from_url(store_url, secret=SECRET)
    try:
        for _ in range(2):
            await validator.connect(wait=10)
            assert (await validator.check(TOKEN, client_ip=LISTED)).reason is Reason.IP_LISTED
            assert validator.listener is not None and validator.listener.connected.is_set()
            await validator.sync()
            await admin.remove_ips(TOKEN, [LISTED])
            await validator.sync()
            assert not (await validator.check(TOKEN, client_ip=LISTED)).allowed
            await admin.add_ips(TOKEN, [LISTED])
            await validator.close()
    finally:
        await validator.close()
        await admin.close()


@pytest.mark.timeout(30)
async def test_nothing_read_while_a_node_is_not_listened_to_is_served_fresh(
    redis_url: str, admin: Admin
) -> None:
    """Issue 17, item 3: between a node's lost (or not yet confirmed) subscription and its
    confirmation, every check of its tokens reads the store; the cache serves them fresh again
    only once the node is listened to, and what it held before is read again then."""
    async with Validator.from_url(redis_url, secret=SECRET) as validator:
        assert validator.listener is not None
        await validator.sync()
        assert (await validator.check(TOKEN, client_ip=LISTED)).allowed
        assert validator.check_cached(TOKEN, client_ip=LISTED) is not None
        node = next(iter(validator.listener.layout))
        validator.shards.on_down(node)  # as when its connection drops
        assert validator.check_cached(TOKEN, client_ip=LISTED) is None, "served fresh after the loss"
        assert (await validator.check(TOKEN, client_ip=LISTED)).allowed  # read, not cached fresh
        assert validator.check_cached(TOKEN, client_ip=LISTED) is None, "cached fresh while not listened to"
        validator.shards.on_up(node, connected=True)  # the subscription is confirmed again
        assert (await validator.check(TOKEN, client_ip=LISTED)).allowed
        assert validator.check_cached(TOKEN, client_ip=LISTED) is not None
