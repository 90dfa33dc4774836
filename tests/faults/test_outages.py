"""Redis killed, frozen, flushed and cut off while validators serve a concurrent load.

Each test controls its own redis-server. Cached tokens must keep their correct decisions
throughout, uncached ones must fail closed quickly (StoreUnavailable, never a long wait and never
"allowed"), and everything must recover on its own.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from tests.redis_servers import RedisProcess
from validator import Admin, Reason, StoreUnavailable, Validator
from validator.core import Settings
from validator.store.invalidation import CLIENT_NAME

pytestmark = [pytest.mark.promise("P-FAIL-CLOSED")]

SECRET = "fault-secret"
CLIENT_IP = "198.51.100.20"  # listed for the "allowed" tokens, not for the "denied" ones
FAST: Settings = {
    "ping_interval": 0.2,
    "ping_timeout": 0.3,
    "breaker_reset": 0.3,
    "max_stale": 120.0,
}
# A fail-closed answer may cost at most a couple of Redis timeouts (0.2 s), never more.
FAIL_FAST_BOUND = 1.0


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    process = RedisProcess()
    process.start()
    yield process
    process.cleanup()


@dataclass
class Tokens:
    """Stored restricted tokens: `cached` are warmed before the fault, `cold` never are."""

    cached: dict[str, bool] = field(default_factory=dict)  # token -> expected allowed
    cold: dict[str, bool] = field(default_factory=dict)


@pytest.fixture
async def tokens(server: RedisProcess) -> Tokens:
    admin = Admin.from_url(server.url, secret=SECRET)
    await admin.init()
    tokens = Tokens()
    for n in range(40):
        token = f"tok_fault_{n}"
        allowed = n % 2 == 0
        await admin.set_ips(token, [CLIENT_IP if allowed else "203.0.113.9"])
        await admin.enable(token, "ip")
        (tokens.cached if n < 20 else tokens.cold)[token] = allowed
    await admin.close()
    return tokens


@pytest.fixture
async def validator(server: RedisProcess, tokens: Tokens) -> AsyncIterator[Validator]:
    async with Validator.from_url(
        server.url, secret=SECRET, timeout=0.2, connect_timeout=0.2, **FAST
    ) as validator:
        yield validator


@dataclass
class Load:
    wrong: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    fail_closed: list[float] = field(default_factory=list)  # latency of each StoreUnavailable
    decided: int = 0


async def run_load(
    validator: Validator, tokens: Tokens, during: Callable[[], Awaitable[None]], tasks: int = 40
) -> Load:
    """Checks from `tasks` concurrent tasks while `during()` runs, and one second after it."""
    load = Load()
    stop = asyncio.Event()
    cached = list(tokens.cached.items())

    async def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            # Two checks in three use warm tokens; the third a token never seen, so always a
            # miss (unknown, hence allowed by the default policy, whenever the store answers).
            token, expected = cached[(n + i) % len(cached)] if i % 3 else (f"never-seen-{n}-{i}", True)
            started = time.monotonic()
            try:
                decision = await validator.check(token, client_ip=CLIENT_IP)
            except StoreUnavailable:
                load.fail_closed.append(time.monotonic() - started)
                if token in tokens.cached:
                    load.wrong.append(f"cached {token} failed closed")
            except Exception as error:
                load.errors.append(error)
            else:
                load.decided += 1
                if decision.allowed is not expected:
                    load.wrong.append(f"{token}: {decision}")
            await asyncio.sleep(0.001)

    workers = [asyncio.ensure_future(worker(n)) for n in range(tasks)]
    try:
        await during()
        await asyncio.sleep(1.0)  # load keeps running after recovery
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 10)
    return load


async def warm(validator: Validator, tokens: Tokens) -> None:
    await validator.sync()
    for token, expected in tokens.cached.items():
        assert (await validator.check(token, client_ip=CLIENT_IP)).allowed is expected


async def wait_until_recovered(validator: Validator, tokens: Tokens, timeout: float = 10.0) -> None:
    assert validator.listener is not None
    await asyncio.wait_for(validator.listener.connected.wait(), timeout)
    deadline = time.monotonic() + timeout
    token, expected = next(iter(tokens.cold.items()))
    while True:
        try:
            decision = await validator.check(token, client_ip=CLIENT_IP)
        except StoreUnavailable:
            assert time.monotonic() < deadline, "validator did not recover"
            await asyncio.sleep(0.05)  # the breaker lets a trial through after breaker_reset
            continue
        assert decision.allowed is expected
        return


def assert_sound(load: Load) -> None:
    assert load.errors == []
    assert load.wrong == []
    assert load.decided > 0
    assert max(load.fail_closed, default=0.0) < FAIL_FAST_BOUND


@pytest.mark.timeout(60)
async def test_sigkill_and_restart(server: RedisProcess, tokens: Tokens, validator: Validator) -> None:
    await warm(validator, tokens)
    server.save()

    async def outage() -> None:
        await asyncio.sleep(0.3)
        server.kill()
        await asyncio.sleep(1.0)
        server.start()
        await wait_until_recovered(validator, tokens)

    load = await asyncio.wait_for(run_load(validator, tokens, outage), 40)
    assert_sound(load)
    assert load.fail_closed, "the outage was not observed"
    for token, expected in {**tokens.cached, **tokens.cold}.items():
        assert (await validator.check(token, client_ip=CLIENT_IP)).allowed is expected


@pytest.mark.timeout(60)
async def test_sigstop_for_two_seconds(server: RedisProcess, tokens: Tokens, validator: Validator) -> None:
    await warm(validator, tokens)

    async def freeze() -> None:
        await asyncio.sleep(0.3)
        server.signal(signal.SIGSTOP)
        await asyncio.sleep(2.0)
        server.signal(signal.SIGCONT)
        await wait_until_recovered(validator, tokens)

    load = await asyncio.wait_for(run_load(validator, tokens, freeze), 40)
    assert_sound(load)
    assert load.fail_closed, "the freeze was not observed"


@pytest.mark.timeout(60)
@pytest.mark.promise("P-WIPED-STORE-FAILS-CLOSED")
@pytest.mark.promise("P-INVALIDATION")
async def test_flushall_drops_every_cache_and_opens_nothing(server: RedisProcess, tokens: Tokens) -> None:
    validators = [Validator.from_url(server.url, secret=SECRET, timeout=0.2, **FAST) for _ in range(3)]
    for v in validators:
        await v.connect()
        await warm(v, tokens)
    raw = aioredis.Redis.from_url(server.url)
    await raw.flushall()
    for v in validators:
        await v.sync()  # a barrier: the flush was seen before it
        assert all(v.check_cached(token, client_ip=CLIENT_IP) is None for token in tokens.cached)
        for token, expected in tokens.cached.items():
            # Nothing fresh; the last known decision still serves while the store is unsound.
            assert (await v.check(token, client_ip=CLIENT_IP)).allowed is expected
        for token in tokens.cold:
            with pytest.raises(StoreUnavailable):
                await v.check(token, client_ip=CLIENT_IP)
    # An admin re-initialises: the (now empty) store is trusted again, at once.
    admin = Admin.from_url(server.url, secret=SECRET)
    await admin.init()
    await admin.close()
    for v in validators:
        decision = await v.check(next(iter(tokens.cold)), client_ip=CLIENT_IP)
        assert decision.reason is Reason.UNKNOWN_TOKEN
        await v.close()
    await raw.aclose()


@pytest.mark.timeout(60)
@pytest.mark.promise("P-WIPED-STORE-FAILS-CLOSED")
async def test_restart_without_data_fails_closed(
    server: RedisProcess, tokens: Tokens, validator: Validator
) -> None:
    await warm(validator, tokens)
    server.kill()  # no SAVE: the data is gone
    server.start()
    assert validator.listener is not None
    await asyncio.wait_for(validator.listener.connected.wait(), 10)
    await asyncio.sleep(FAST.get("breaker_reset", 1.0))  # let the breaker try again
    for token in tokens.cold:
        with pytest.raises(StoreUnavailable):
            await validator.check(token, client_ip=CLIENT_IP)


@pytest.mark.timeout(60)
@pytest.mark.promise("P-UNCONFIRMED-NOT-FRESH")
async def test_invalidation_connection_killed(
    server: RedisProcess, tokens: Tokens, validator: Validator
) -> None:
    await warm(validator, tokens)
    assert validator.listener is not None
    raw = aioredis.Redis.from_url(server.url, decode_responses=True)
    clients = await raw.client_list()
    (ours,) = [c for c in clients if c["name"] == CLIENT_NAME]
    await raw.client_kill_filter(_id=ours["id"])
    await asyncio.wait_for(validator.listener.lost.wait(), 10)
    await asyncio.wait_for(validator.listener.connected.wait(), 10)
    assert validator.listener.connections == 2
    assert all(validator.check_cached(token, client_ip=CLIENT_IP) is None for token in tokens.cached)
    # Coherent again: a change made now reaches the cache.
    token = next(t for t, allowed in tokens.cached.items() if allowed)
    assert (await validator.check(token, client_ip=CLIENT_IP)).allowed
    admin = Admin.from_url(server.url, secret=SECRET)
    await admin.set_ips(token, ["203.0.113.99"])
    await admin.close()
    await validator.sync()
    assert not (await validator.check(token, client_ip=CLIENT_IP)).allowed
    await raw.aclose()


@pytest.mark.timeout(30)
@pytest.mark.promise("P-INVALIDATION")
async def test_change_by_redis_cli_reaches_the_cache(
    server: RedisProcess, tokens: Tokens, validator: Validator
) -> None:
    await warm(validator, tokens)
    token = next(t for t, allowed in tokens.cached.items() if allowed)
    _, _, ips_key = validator.store.keys(validator.store.token_hash(token))
    process = await asyncio.create_subprocess_exec(
        "redis-cli", "-p", str(server.port), "SREM", ips_key, CLIENT_IP, stdout=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(process.wait(), 10) == 0
    await validator.sync()
    assert not (await validator.check(token, client_ip=CLIENT_IP)).allowed
