"""Every way out of a store read settles the circuit breaker; an unreadable record is a store failure.

Issue 12, items 1 and 8 (docs/behaviour.md, "Every way out is closed on failure"). A read that reports
nothing to the breaker leaves it half-open, and then every uncached check fails closed until the
process restarts; a record edited by hand must fail its own token's checks closed, never raise a
bare error, never open the circuit for the other tokens, and heal when it is fixed.
The restart tests control their own redis-server; the cancellation tests use a fake store.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from tests.integration.test_cli_support import Cli
from tests.redis_cluster import Backend
from tests.redis_servers import RedisProcess
from validator import Admin, Reason, Restrictions, StoreUnavailable, Validator
from validator.breaker import BreakerState, CircuitBreaker
from validator.core import Settings
from validator.model import Mode
from validator.store import Store, UnreadableRecord, fingerprint, parse_read

SECRET = "cli-test-secret"  # the CLI test helper's secret, so `validator-admin` reads our records
CLIENT_IP = "198.51.100.20"
OTHER_IP = "203.0.113.9"
ALLOWED = "tok_h1_allowed_do_not_log"  # IP-restricted, CLIENT_IP listed
DENIED = "tok_h1_denied_do_not_log"  # IP-restricted, CLIENT_IP not listed
RESET = 0.3
FAST: Settings = {"ping_interval": 0.2, "ping_timeout": 0.3, "breaker_reset": RESET}
# "Within breaker_reset plus one read": the read itself, on a CPU shared with other test runs.
READ_BOUND = 1.5


def record(ip: str) -> Restrictions:
    return Restrictions(ip_enabled=True, ips=[ip])


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    process = RedisProcess()
    process.start()
    yield process
    process.cleanup()


@pytest.fixture
async def admin(server: RedisProcess) -> AsyncIterator[Admin]:
    admin = Admin.from_url(server.url, secret=SECRET)
    await admin.init()
    yield admin
    await admin.close()


async def restore(url: str) -> None:
    """What an operator does after a wipe: initialise, then store the records again."""
    admin = Admin.from_url(url, secret=SECRET)
    try:
        await admin.init()
        await admin.put(ALLOWED, record(CLIENT_IP), allow_private=True)
        await admin.put(DENIED, record(OTHER_IP), allow_private=True)
    finally:
        await admin.close()


def validator_on(url: str, **settings: Any) -> Validator:
    return Validator.from_url(url, secret=SECRET, timeout=0.2, connect_timeout=0.2, **{**FAST, **settings})


async def open_circuit(validator: Validator) -> None:
    """Checks of never-seen tokens until the breaker opens (the store is down)."""
    deadline = time.monotonic() + 10
    while validator.breaker.state is not BreakerState.OPEN:
        assert time.monotonic() < deadline, "the breaker did not open"
        with pytest.raises(StoreUnavailable):
            await validator.check(f"tok_h1_probe_{uuid.uuid4().hex}", client_ip=CLIENT_IP)


async def fails_closed_for(validator: Validator, seconds: float) -> None:
    """Uncached checks refused for `seconds` (several breaker periods: the trial reads happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for token in (ALLOWED, DENIED):
            with pytest.raises(StoreUnavailable):
                await validator.check(token, client_ip=CLIENT_IP)
        await asyncio.sleep(0.02)


async def seconds_to_recover(validator: Validator, timeout: float = 10.0) -> float:
    """Seconds until an uncached check is decided again (it must then be the right decision)."""
    started = time.monotonic()
    while True:
        try:
            decision = await validator.check(ALLOWED, client_ip=CLIENT_IP)
        except StoreUnavailable:
            assert time.monotonic() - started < timeout, "the validator did not recover"
            await asyncio.sleep(0.02)
            continue
        assert decision.allowed
        assert not (await validator.check(DENIED, client_ip=CLIENT_IP)).allowed
        return time.monotonic() - started


# ------------------------------------------------------------------------------ item 1: restarts


@pytest.mark.promise("P-BREAKER")
@pytest.mark.promise("P-WIPED-STORE-FAILS-CLOSED")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("invalidation", [True, False], ids=["invalidation", "no-invalidation"])
async def test_restart_empty_fails_closed_then_init_and_restore_recover(
    server: RedisProcess, invalidation: bool
) -> None:
    await restore(server.url)
    async with validator_on(server.url, invalidation=invalidation) as validator:
        assert (await validator.check("tok_h1_warm", client_ip=CLIENT_IP)).allowed
        server.kill()
        await open_circuit(validator)
        server.start()  # the same port, no persistence: empty, without the marker
        if validator.listener is not None:
            await asyncio.wait_for(validator.listener.connected.wait(), 10)
        await fails_closed_for(validator, 4 * RESET)
        await restore(server.url)
        assert await seconds_to_recover(validator) < RESET + READ_BOUND


@pytest.mark.promise("P-BREAKER")
@pytest.mark.timeout(60)
async def test_validator_started_before_redis_and_before_init_recovers() -> None:
    server = RedisProcess()
    try:
        async with validator_on(server.url) as validator:
            await open_circuit(validator)
            server.start()
            assert validator.listener is not None
            await asyncio.wait_for(validator.listener.connected.wait(), 10)
            await fails_closed_for(validator, 4 * RESET)  # up, but never initialised
            await restore(server.url)
            assert await seconds_to_recover(validator) < RESET + READ_BOUND
    finally:
        server.cleanup()


# ------------------------------------------------------------------------------ item 1: fake store


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeReads:
    """Stands in for `Store.read`: each read takes the next scripted outcome (an exception to
    raise, or an awaitable to wait for first), then reads the real in-process store."""

    def __init__(self, store: Store) -> None:
        self.real = store.read
        self.script: list[BaseException | Callable[[], Awaitable[object]]] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.started = asyncio.Event()

    async def __call__(self, token_hash: str) -> Restrictions | None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.started.set()
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            await step()
        return await self.real(token_hash)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Validator, FakeReads, Clock]]:
    """A validator on an in-process store with scripted reads and a breaker on a fake clock,
    its circuit open and due for a trial."""
    validator = Validator(Store.from_url(f"memory://h1-{uuid.uuid4().hex}", secret=SECRET))
    await validator.connect()
    admin = Admin(validator.store)
    await admin.put(DENIED, record(OTHER_IP), allow_private=True)
    reads = FakeReads(validator.store)
    validator.store.read = reads  # type: ignore[method-assign]
    clock = Clock()
    validator.breaker = CircuitBreaker(failure_threshold=3, reset_timeout=1.0, clock=clock)
    validator.breaker.trip()
    clock.now = 1.0
    yield validator, reads, clock
    await validator.close()


async def assert_answers_at_once(validator: Validator) -> None:
    """An uncached check is decided now, without waiting for another reset timeout."""
    assert not (await validator.check(DENIED, client_ip=CLIENT_IP)).allowed
    assert validator.breaker.state is BreakerState.CLOSED


@pytest.mark.promise("P-BREAKER")
@pytest.mark.timeout(10)
async def test_a_cancelled_trial_read_does_not_wedge_the_breaker(
    fake: tuple[Validator, FakeReads, Clock],
) -> None:
    validator, reads, _ = fake
    never = asyncio.Event()
    reads.script.append(never.wait)
    check = asyncio.ensure_future(validator.check(DENIED, client_ip=CLIENT_IP))
    await reads.started.wait()
    assert validator.breaker.state is BreakerState.HALF_OPEN
    reads.tasks[0].cancel()  # the trial itself is cancelled (e.g. at shutdown)
    with pytest.raises((asyncio.CancelledError, StoreUnavailable)):
        await check
    assert validator.breaker.state is not BreakerState.HALF_OPEN
    await assert_answers_at_once(validator)  # the fake clock did not move


@pytest.mark.promise("P-BREAKER")
@pytest.mark.promise("P-NO-UNHANDLED-ERROR")
@pytest.mark.timeout(10)
async def test_a_read_cancelled_inside_the_store_client_is_a_failed_read(
    fake: tuple[Validator, FakeReads, Clock],
) -> None:
    validator, reads, clock = fake
    reads.script.append(asyncio.CancelledError())  # raised by the client, nobody cancelled us
    with pytest.raises(StoreUnavailable):
        await validator.check(DENIED, client_ip=CLIENT_IP)
    assert validator.breaker.state is BreakerState.OPEN
    clock.now = 2.0
    await assert_answers_at_once(validator)


@pytest.mark.promise("P-BREAKER")
@pytest.mark.timeout(10)
async def test_a_client_that_disconnects_during_the_trial_does_not_wedge_the_breaker(
    fake: tuple[Validator, FakeReads, Clock],
) -> None:
    validator, reads, _ = fake
    answer = asyncio.Event()
    reads.script.append(answer.wait)
    check = asyncio.ensure_future(validator.check(DENIED, client_ip=CLIENT_IP))
    await reads.started.wait()
    check.cancel()  # the request went away; its trial read goes on
    with pytest.raises(asyncio.CancelledError):
        await check
    answer.set()
    await asyncio.wait_for(asyncio.gather(*reads.tasks, return_exceptions=True), 5)
    await assert_answers_at_once(validator)


@pytest.mark.promise("P-BREAKER")
@pytest.mark.promise("P-NO-UNHANDLED-ERROR")
@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "error",
    [RuntimeError("a bug in the client"), ValueError("unparseable"), ConnectionResetError()],
    ids=["runtime-error", "value-error", "os-error"],
)
async def test_an_unexpected_error_in_a_read_is_a_store_failure(
    fake: tuple[Validator, FakeReads, Clock], error: Exception
) -> None:
    validator, reads, clock = fake
    reads.script.append(error)
    with pytest.raises(StoreUnavailable):
        await validator.check(DENIED, client_ip=CLIENT_IP)
    assert validator.breaker.state is BreakerState.OPEN  # the failed trial opened it again
    clock.now = 2.0
    await assert_answers_at_once(validator)


@pytest.mark.promise("P-BREAKER")
@pytest.mark.timeout(10)
async def test_a_failed_marker_read_does_not_poison_later_ones(
    fake: tuple[Validator, FakeReads, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    validator, _, clock = fake
    real = validator.store.marker_state
    failures = [StoreUnavailable("connection refused")]

    async def marker_state(*args: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(*args)

    monkeypatch.setattr(validator.store, "marker_state", marker_state)
    validator.shards.marker_changed()  # the marker must be read again before the next record
    with pytest.raises(StoreUnavailable):
        await validator.check(DENIED, client_ip=CLIENT_IP)
    assert validator.breaker.state is BreakerState.OPEN
    clock.now = 2.0
    await assert_answers_at_once(validator)


@pytest.mark.promise("P-BREAKER")
@pytest.mark.timeout(10)
async def test_a_marker_read_overtaken_by_a_wipe_does_not_count(
    fake: tuple[Validator, FakeReads, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    validator, _, _ = fake
    real = validator.store.marker_state
    read_before_the_wipe = asyncio.Event()
    wiped = asyncio.Event()
    answers = ["ok"]  # what the first marker read saw, just before the FLUSHALL

    async def marker_state(*args: Any) -> Any:
        if answers:
            read_before_the_wipe.set()
            await wiped.wait()
            return answers.pop()
        return await real(*args)

    monkeypatch.setattr(validator.store, "marker_state", marker_state)
    validator.breaker.success()
    validator.shards.marker_changed()
    check = asyncio.ensure_future(validator.check(DENIED, client_ip=CLIENT_IP))
    await read_before_the_wipe.wait()
    await validator.store.client.flushall()
    validator.lifecycle.on_keys([validator.store.marker_key])  # the invalidation of the wipe
    wiped.set()
    # DENIED is now unknown (allowed by default): only failing closed is right.
    with pytest.raises(StoreUnavailable):
        await check
    with pytest.raises(StoreUnavailable):
        await validator.check(DENIED, client_ip=CLIENT_IP)
    assert validator.breaker.state is BreakerState.CLOSED  # the store answered


# ------------------------------------------------------------------------------ item 8: corrupt records


Keys = tuple[str, str, str]  # meta, domains, ips (Store.keys)


async def hset(raw: aioredis.Redis, keys: Keys, field: str, value: str) -> None:
    await raw.hset(keys[0], field, value)


async def retype(raw: aioredis.Redis, key: str, make: Callable[[str], Awaitable[Any]]) -> None:
    await raw.delete(key)
    await make(key)


CORRUPTIONS: dict[str, Callable[[aioredis.Redis, Keys], Awaitable[Any]]] = {
    "version-not-a-number": lambda raw, keys: hset(raw, keys, "v", "notanint"),
    # Read leniently, "yes" would be "not enabled": an IP-restricted token open to everyone.
    "switch-not-0-or-1": lambda raw, keys: hset(raw, keys, "i", "yes"),
    "unknown-mode": lambda raw, keys: hset(raw, keys, "r", "sometimes"),
    "unknown-field": lambda raw, keys: hset(raw, keys, "x", "1"),
    "meta-is-a-string": lambda raw, keys: retype(raw, keys[0], lambda k: raw.set(k, "x")),
    "domain-set-is-a-string": lambda raw, keys: retype(raw, keys[1], lambda k: raw.set(k, "x")),
    "ip-set-is-a-list": lambda raw, keys: retype(raw, keys[2], lambda k: raw.rpush(k, CLIENT_IP)),
    "entry-does-not-parse": lambda raw, keys: raw.sadd(keys[1], "example.com:notaport"),
    # Not UTF-8: it must fail this record, not the connection that every read shares.
    "entry-not-utf8": lambda raw, keys: raw.sadd(keys[2], b"\xff"),
}
# Corruptions that only the validator's compiled form rejects: the admin still reads the data.
ADMIN_READABLE = {"entry-does-not-parse"}


@pytest.fixture
async def raw(server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    yield client
    await client.aclose()


async def corrupt(admin: Admin, raw: aioredis.Redis, kind: str) -> str:
    """Store ALLOWED and DENIED, then corrupt ALLOWED's record; its hash."""
    await admin.put(ALLOWED, record(CLIENT_IP), allow_private=True)
    await admin.put(DENIED, record(OTHER_IP), allow_private=True)
    token_hash = admin.token_hash(ALLOWED)
    await CORRUPTIONS[kind](raw, admin.store.keys(token_hash))
    return token_hash


def unreadable_logs(caplog: pytest.LogCaptureFixture, token_hash: str) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.name == "validator"]
    assert not any(ALLOWED in m for m in messages), "a token was logged in clear"
    return [m for m in messages if "unreadable record" in m and fingerprint(token_hash) in m]


@pytest.mark.promise("P-UNREADABLE-RECORD")
@pytest.mark.promise("P-NO-UNHANDLED-ERROR")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["fast", "general"])
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
async def test_an_unreadable_record_fails_its_token_closed_and_heals(
    server: RedisProcess,
    admin: Admin,
    raw: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    path: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="validator")
    token_hash = await corrupt(admin, raw, kind)
    # The fast path needs a live invalidation connection and a connected multiplexer; without
    # invalidations every read takes the general path.
    async with validator_on(server.url, invalidation=path == "fast") as validator:
        assert not (await validator.check(DENIED, client_ip=CLIENT_IP)).allowed  # warms the wire
        general_reads = 0
        read = validator.reads.read

        async def counting_read(token_hash: str, shard: Any) -> Any:
            nonlocal general_reads
            general_reads += 1
            return await read(token_hash, shard)

        monkeypatch.setattr(validator.reads, "read", counting_read)
        for _ in range(2 * validator.breaker.failure_threshold):
            with pytest.raises(UnreadableRecord):
                await validator.check(ALLOWED, client_ip=CLIENT_IP)
        assert (general_reads == 0) is (path == "fast")
        assert validator.breaker.state is BreakerState.CLOSED
        assert len(unreadable_logs(caplog, token_hash)) == 1
        # The other tokens are read as before: one bad record opens nothing.
        assert (await validator.check("tok_h1_unknown", client_ip=CLIENT_IP)).allowed
        await admin.delete(ALLOWED)
        await admin.put(ALLOWED, record(CLIENT_IP), allow_private=True)
        await validator.sync()
        assert (await validator.check(ALLOWED, client_ip=CLIENT_IP)).allowed
        assert not (await validator.check(ALLOWED, client_ip=OTHER_IP)).allowed


@pytest.mark.promise("P-UNREADABLE-RECORD")
@pytest.mark.timeout(30)
async def test_fixing_the_record_by_hand_heals_it(
    server: RedisProcess, admin: Admin, raw: aioredis.Redis
) -> None:
    token_hash = await corrupt(admin, raw, "version-not-a-number")
    async with validator_on(server.url) as validator:
        with pytest.raises(UnreadableRecord):
            await validator.check(ALLOWED, client_ip=CLIENT_IP)
        await raw.hset(admin.store.keys(token_hash)[0], "v", "7")
        await validator.sync()
        assert (await validator.check(ALLOWED, client_ip=CLIENT_IP)).allowed


@pytest.mark.promise("P-UNREADABLE-RECORD")
@pytest.mark.timeout(30)
async def test_fail_open_applies_to_an_unreadable_record(
    server: RedisProcess, admin: Admin, raw: aioredis.Redis
) -> None:
    await corrupt(admin, raw, "switch-not-0-or-1")
    async with validator_on(server.url, fail_open=True) as validator:
        decision = await validator.check(ALLOWED, client_ip=OTHER_IP)
        assert (decision.allowed, decision.reason) == (True, Reason.STORE_UNAVAILABLE)


@pytest.mark.promise("P-UNREADABLE-RECORD")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", sorted(set(CORRUPTIONS) - ADMIN_READABLE))
async def test_the_admin_reads_an_unreadable_record_as_a_store_failure(
    admin: Admin, raw: aioredis.Redis, kind: str
) -> None:
    token_hash = await corrupt(admin, raw, kind)
    with pytest.raises(StoreUnavailable) as get_error:
        await admin.get(ALLOWED)
    with pytest.raises(StoreUnavailable):
        await admin.read_many([token_hash])
    assert "\n" not in str(get_error.value)
    assert (await admin.get(DENIED)) is not None


@pytest.mark.promise("P-UNREADABLE-RECORD")
@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["version-not-a-number", "ip-set-is-a-list"])
async def test_the_cli_shows_an_unreadable_record_as_one_line(
    server: RedisProcess, admin: Admin, raw: aioredis.Redis, kind: str
) -> None:
    await corrupt(admin, raw, kind)
    result = await asyncio.to_thread(Cli(server.url), "show", ALLOWED)
    assert result.code == 3
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ item 8: replies


GOOD_META = ["d", "0", "i", "1", "v", "3"]

UNREADABLE_REPLIES: dict[str, Any] = {
    "not-a-list": "x",
    "two-parts": [GOOD_META, []],
    "odd-meta": [[*GOOD_META, "r"], [], []],
    "bytes-in-meta": [[b"d", b"0", b"i", b"1", b"v", b"3"], [], []],
    "set-not-a-list": [GOOD_META, "example.com", []],
    "non-ascii-entry": [GOOD_META, ["exämple.com"], []],
    "undecodable-entry": [GOOD_META, [], [b"\xff".decode("utf-8", "surrogateescape")]],
    "missing-switch": [["d", "0", "v", "3"], [], []],
    "switch-yes": [["d", "yes", "i", "1", "v", "3"], [], []],
    "missing-version": [["d", "0", "i", "1"], [], []],
    "negative-version": [["d", "0", "i", "1", "v", "-1"], [], []],
    "unicode-digit-version": [["d", "0", "i", "1", "v", "٣"], [], []],
    "unknown-mode": [[*GOOD_META, "r", "sometimes"], [], []],
    "unknown-field": [[*GOOD_META, "x", "1"], [], []],
}


@pytest.mark.promise("P-UNREADABLE-RECORD")
@pytest.mark.promise("P-NO-UNHANDLED-ERROR")
@pytest.mark.parametrize("reply", UNREADABLE_REPLIES.values(), ids=UNREADABLE_REPLIES.keys())
def test_unreadable_replies(reply: Any) -> None:
    with pytest.raises(UnreadableRecord) as error:
        parse_read(reply)
    assert "\n" not in str(error.value)


@pytest.mark.promise("P-UNREADABLE-RECORD")
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (None, None),
        ([GOOD_META, [], [CLIENT_IP]], Restrictions(ip_enabled=True, ips=[CLIENT_IP], version=3)),
        (
            [["d", "1", "i", "0", "v", "12", "r", "report"], ["b.example", "a.example"], []],
            Restrictions(
                domain_enabled=True, domains=["a.example", "b.example"], version=12, mode=Mode.REPORT
            ),
        ),
    ],
    ids=["unknown-token", "ip-restricted", "report-mode"],
)
def test_readable_replies(reply: Any, expected: Restrictions | None) -> None:
    assert parse_read(reply) == expected


async def node_holding(backend: Backend, key: str) -> aioredis.Redis:
    """A client of the write node that serves `key` (on a Cluster: the primary of its slot)."""
    nodes = backend.write_nodes()
    for node in nodes:
        try:
            await node.type(key)
        except redis.exceptions.ResponseError:  # MOVED: another primary's slot
            continue
        for other in nodes:
            if other is not node:
                await other.aclose()
        return node
    raise AssertionError(f"no write node serves {key}")


@pytest.mark.promise("P-UNREADABLE-RECORD")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["switch-not-0-or-1", "entry-not-utf8"])
async def test_an_unreadable_record_fails_only_its_token_on_every_deployment(
    backend: Backend, kind: str
) -> None:
    admin = Admin.from_url(backend.url, secret=SECRET)
    try:
        await admin.init()
        await admin.put(ALLOWED, record(CLIENT_IP), allow_private=True)
        await admin.put(DENIED, record(OTHER_IP), allow_private=True)
        keys = admin.store.keys(admin.token_hash(ALLOWED))
        raw = await node_holding(backend, keys[0])
        try:
            await CORRUPTIONS[kind](raw, keys)
        finally:
            await raw.aclose()
        async with validator_on(backend.url) as validator:
            for _ in range(2 * validator.settings["breaker_threshold"]):
                with pytest.raises(UnreadableRecord):
                    await validator.check(ALLOWED, client_ip=CLIENT_IP)
            # The breaker stayed closed and the other tokens are read as before.
            assert (await validator.check(DENIED, client_ip=CLIENT_IP)).reason is Reason.IP_NOT_LISTED
            assert (await validator.check("tok_h1_never_stored", client_ip=CLIENT_IP)).allowed
            await admin.delete(ALLOWED)
            await admin.put(ALLOWED, record(CLIENT_IP), allow_private=True)
            await validator.sync()
            assert (await validator.check(ALLOWED, client_ip=CLIENT_IP)).allowed
    finally:
        await admin.close()
