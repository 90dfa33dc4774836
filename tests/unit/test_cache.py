"""The local cache: LRU bounds, expiry, stale use, single flight, invalidation races."""

from __future__ import annotations

import asyncio

import pytest

from validator.cache import Boxed, Cache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kwargs: float) -> Cache[Boxed[str]]:
    settings: dict[str, float] = {
        "max_entries": 3,
        "max_unknown": 2,
        "ttl": 10,
        "unknown_ttl": 5,
        "max_stale": 100,
    }
    settings.update(kwargs)
    return Cache(clock=clock, **settings)  # type: ignore[arg-type]


async def fill(cache: Cache[Boxed[str]], token: str, value: str, known: bool = True) -> None:
    async def read() -> tuple[Boxed[str], bool]:
        return Boxed(value), known

    assert (await cache.load(token, "h-" + token, read)).value == value


async def test_hit_after_load_and_expiry() -> None:
    clock = Clock()
    cache = make(clock)
    await fill(cache, "a", "A")
    entry = cache.fresh("a")
    assert entry is not None and entry.value == "A"
    clock.now += 10.5
    assert cache.fresh("a") is None
    stale = cache.usable("a")
    assert stale is not None and stale.value == "A"
    clock.now += 100
    assert cache.usable("a") is None


async def test_unknown_tokens_expire_sooner() -> None:
    clock = Clock()
    cache = make(clock)
    await fill(cache, "u", "U", known=False)
    clock.now += 6
    assert cache.fresh("u") is None


async def test_lru_evicts_least_recently_used() -> None:
    cache = make(Clock())
    for token in "abc":
        await fill(cache, token, token.upper())
    assert cache.fresh("a") is not None  # a is now the most recently used
    await fill(cache, "d", "D")
    assert cache.fresh("b") is None
    assert [t for t in "acd" if cache.fresh(t) is not None] == ["a", "c", "d"]


@pytest.mark.promise("P-UNKNOWN-CACHE-APART")
async def test_unknown_tokens_have_their_own_bound() -> None:
    cache = make(Clock())
    for token in "abc":
        await fill(cache, token, token)
    for n in range(50):
        await fill(cache, f"random-{n}", "unknown", known=False)
    assert all(cache.fresh(t) is not None for t in "abc")
    assert len(cache) == 3 + 2


@pytest.mark.promise("P-SINGLE-FLIGHT")
async def test_concurrent_loads_share_one_read() -> None:
    cache = make(Clock())
    reads = 0
    release = asyncio.Event()

    async def read() -> tuple[Boxed[str], bool]:
        nonlocal reads
        reads += 1
        await release.wait()
        return Boxed("A"), True

    waiters = [asyncio.ensure_future(cache.load("a", "h-a", read)) for _ in range(100)]
    await asyncio.sleep(0)
    release.set()
    assert [entry.value for entry in await asyncio.wait_for(asyncio.gather(*waiters), 5)] == ["A"] * 100
    assert reads == 1


@pytest.mark.promise("P-SINGLE-FLIGHT")
async def test_cancelled_first_caller_does_not_cancel_the_shared_read() -> None:
    cache = make(Clock())
    release = asyncio.Event()

    async def read() -> tuple[Boxed[str], bool]:
        await release.wait()
        return Boxed("A"), True

    first = asyncio.ensure_future(cache.load("a", "h-a", read))
    second = asyncio.ensure_future(cache.load("a", "h-a", read))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert (await asyncio.wait_for(second, 5)).value == "A"
    assert cache.fresh("a") is not None


async def test_failed_read_reaches_every_waiter_and_caches_nothing() -> None:
    cache = make(Clock())

    async def read() -> tuple[Boxed[str], bool]:
        await asyncio.sleep(0)
        raise RuntimeError("store down")

    results = await asyncio.gather(*(cache.load("a", "h-a", read) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert cache.fresh("a") is None


@pytest.mark.promise("P-READ-IN-FLIGHT-NOT-CACHED")
@pytest.mark.parametrize("how", ["invalidate", "clear"])
async def test_invalidation_during_a_read_keeps_its_result_out(how: str) -> None:
    cache = make(Clock())
    started, release = asyncio.Event(), asyncio.Event()

    async def read() -> tuple[Boxed[str], bool]:
        started.set()
        await release.wait()
        return Boxed("old"), True

    load = asyncio.ensure_future(cache.load("a", "h-a", read))
    await started.wait()
    if how == "invalidate":
        cache.invalidate("h-a")
    else:
        cache.clear()
    release.set()
    assert (await asyncio.wait_for(load, 5)).value == "old"
    assert cache.fresh("a") is None
    assert cache.usable("a") is None  # not even stale: it may predate the change


@pytest.mark.timeout(10)
async def test_a_read_in_flight_when_everything_expires_is_kept_as_stale_only() -> None:
    # Invalidations may have been missed while it was read (the listener (re)connected or lost
    # its link): never served fresh, but the stale-if-error fallback, as an entry cached before.
    cache = make(Clock())
    started, release = asyncio.Event(), asyncio.Event()

    async def read() -> tuple[Boxed[str], bool]:
        started.set()
        await release.wait()
        return Boxed("read"), True

    load = asyncio.ensure_future(cache.load("a", "h-a", read))
    await started.wait()
    cache.expire_all()
    release.set()
    assert (await asyncio.wait_for(load, 5)).value == "read"
    assert cache.fresh("a") is None
    usable = cache.usable("a")
    assert usable is not None and usable.value == "read"


async def test_invalidate_by_hash() -> None:
    cache = make(Clock())
    await fill(cache, "a", "A")
    await fill(cache, "b", "B")
    cache.invalidate("h-a")
    cache.invalidate("h-unknown")
    assert cache.fresh("a") is None
    assert cache.fresh("b") is not None


@pytest.mark.timeout(10)
async def test_an_entry_already_held_is_stored_as_a_copy() -> None:
    cache = make(Clock())
    shared = Boxed("U")  # as the rules of every unknown token are one object

    async def read() -> tuple[Boxed[str], bool]:
        return shared, False

    await cache.load("u1", "h-u1", read)
    await cache.load("u2", "h-u2", read)
    first, second = cache.fresh("u1"), cache.fresh("u2")
    assert first is not None and second is not None and first is not second
    assert (first.token_hash, second.token_hash) == ("h-u1", "h-u2")
    assert first.value == second.value == "U"
    cache.invalidate("h-u1")
    assert cache.fresh("u1") is None and cache.fresh("u2") is second
