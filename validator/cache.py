"""The local cache on the hot path: LRU with expiry, single-flight loads, invalidation.

Knows neither Redis nor ASGI. Entries are keyed by the raw token, so a hit needs no hashing;
each entry remembers its token hash so that an invalidation (which names Redis keys, hence
hashes) can find it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Self, TypeVar, cast

from validator import model
from validator.errors import ConfigurationError
from validator.model import Entry

__all__ = ["Boxed", "Cache", "Entry"]

V = TypeVar("V")
A = TypeVar("A")


class Boxed(Entry, Generic[V]):
    """An entry carrying any value."""

    __slots__ = ("value",)

    def __init__(self, value: V) -> None:
        super().__init__()
        self.value = value

    def copied(self) -> Self:
        return type(self)(self.value)


E = TypeVar("E", bound=Entry)


# What a read gives a load: the value and whether the token is known, the error it failed
# with, or None when it was cancelled (then so are the callers).
Outcome = tuple[E, bool] | BaseException | None
# Starts the read of one token for `Cache.start_load`: called with the token's hash, the caller's
# argument and the `settle` to call with the read's `Outcome`; returns the event loop it runs on.
# (Its type variables in the order they appear: `Start[A, E]`.)
Start = Callable[[str, A, Callable[[Outcome[E]], None]], asyncio.AbstractEventLoop]


class _Load(Generic[E]):
    __slots__ = (
        "cache",
        "expired",
        "invalidated",
        "loop",
        "outcome",
        "settled",
        "token",
        "token_hash",
        "waiters",
    )

    def __init__(self, cache: Cache[E], token: str, token_hash: str) -> None:
        self.cache = cache
        self.token = token
        self.token_hash = token_hash
        # The token changed while it was read: the result may predate the change, so it is not
        # cached at all (not even as the stale-if-error fallback).
        self.invalidated = False
        # Invalidations may have been missed while it was read (`Cache.expire_all`): the result
        # is cached as the stale-if-error fallback only, never served fresh.
        self.expired = False
        # One future per caller waiting for the read: a caller's cancellation cancels its own
        # future only, never the read the others share.
        self.waiters: list[asyncio.Future[E]] = []
        self.settled = False
        self.outcome: E | BaseException | None = None
        self.loop: asyncio.AbstractEventLoop  # that of the read, set once it is started

    def settle(self, outcome: Outcome[E]) -> None:
        """The read is over: store its value (unless invalidated), wake every caller."""
        if self.settled:
            return
        cache = self.cache
        cache._forget(self)
        if outcome.__class__ is tuple:
            value, known = outcome
            if not self.invalidated:
                cache._put(self.token, self.token_hash, value, known, fresh=not self.expired)
            result: E | BaseException | None = value
        else:
            result = cast(BaseException | None, outcome)
        self.outcome = result
        for waiter in self.waiters:
            if not waiter.done():  # done: its caller was cancelled
                _wake(waiter, result)


class Cache(Generic[E]):
    """Bounded LRU maps for known and unknown tokens (kept apart so a flood of random tokens
    evicts only other unknown tokens), with single-flight loading."""

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        max_unknown: int = 10_000,
        ttl: float = 60.0,
        unknown_ttl: float = 10.0,
        max_stale: float = 300.0,
        incoherent_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_unknown < 1:
            raise ConfigurationError("cache sizes must be at least 1")
        if ttl <= 0 or unknown_ttl <= 0 or max_stale < 0 or incoherent_ttl < 0:
            raise ConfigurationError("cache ttl must be positive, max_stale and incoherent_ttl not negative")
        self.max_entries = max_entries
        self.max_unknown = max_unknown
        self.ttl = ttl
        self.unknown_ttl = unknown_ttl
        self.max_stale = max_stale
        self.incoherent_ttl = incoherent_ttl
        # Whether invalidations of a token (by hash) are known to arrive now, its store node
        # subscribed to (`validator.shards`); None: always. Entries stored while they are not are
        # fresh for at most `incoherent_ttl` (by default 0: not served fresh at all).
        self.coherent_for: Callable[[str], bool] | None = None
        self._clock = clock
        self._known: OrderedDict[str, E] = OrderedDict()
        self._unknown: OrderedDict[str, E] = OrderedDict()
        self._token_of: dict[str, str] = {}
        self._loads: dict[str, _Load[E]] = {}
        self._loads_by_hash: dict[str, _Load[E]] = {}
        self.loads_started = 0
        self.evictions = 0  # entries pushed out by the size bound
        self.invalidations = 0  # entries dropped because the store said they changed
        self.expirations = 0  # times every entry was made stale at once (invalidations missed)

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)

    def fresh(self, token: str) -> E | None:
        """The entry for `token` if it is fresh (the hot path); marks it recently used."""
        entry = self._known.get(token)
        if entry is None:
            entry = self._unknown.get(token)
            if entry is None:
                return None
        if entry.fresh_until < self._clock():
            return None
        # CLOCK, the usual LRU approximation: a hit only sets a flag, which eviction reads
        # (see _put); moving the entry to the end on every hit cost ~10% of a cached check by
        # touching two more linked-list nodes (benchmarks: hotpath).
        entry.recent = True
        return entry

    def usable(self, token: str) -> E | None:
        """The entry for `token` if it may still serve while the store is failing."""
        entry = self._known.get(token) or self._unknown.get(token)
        if entry is None or entry.usable_until < self._clock():
            return None
        return entry

    async def load(
        self,
        token: str,
        token_hash: str,
        read: Callable[[], Awaitable[tuple[E, bool]]],
    ) -> E:
        """Load through `read` (returning the value and whether the token is known), sharing
        one read among concurrent callers for the same token (`start_load`)."""
        return await self.start_load(token, token_hash, _start_awaitable, read)

    def start_load(self, token: str, token_hash: str, start: Start[A, E], arg: A) -> asyncio.Future[E]:
        """The future of `token`'s value: of the read in flight for it, or of a new one started
        by `start(token_hash, arg, settle)`, which calls `settle` once with the read's `Outcome`
        (see `Start`). One read is shared among concurrent callers; an invalidation of the token
        while it is in flight keeps its result out of the cache.

        The read settles the load itself: a read whose outcome is known inside `data_received`
        (the validator's fast read) stores the entry and wakes the callers there, one event-loop
        pass from the reply to the waiting task, as a hand-written client (benchmarks: miss; a
        future per link of read -> load -> caller cost a pass each)."""
        load = self._loads.get(token)
        if load is None:
            load = _Load(self, token, token_hash)
            self._loads[token] = load
            self._loads_by_hash[token_hash] = load
            self.loads_started += 1
            try:
                loop = start(token_hash, arg, load.settle)
            except BaseException:
                self._forget(load)
                raise
            load.loop = loop
            waiter: asyncio.Future[E] = loop.create_future()
            if load.settled:  # settled inside `start`: no caller was waiting yet
                _wake(waiter, load.outcome)
            else:
                load.waiters.append(waiter)
            return waiter
        # Each caller awaits a future of its own: `asyncio.shield` around the shared read cost
        # an outer future, two callbacks and an event-loop pass more per miss (benchmarks: miss).
        waiter = load.loop.create_future()
        load.waiters.append(waiter)
        return waiter

    def _forget(self, load: _Load[E]) -> None:
        load.settled = True
        del self._loads[load.token]
        del self._loads_by_hash[load.token_hash]

    def _put(self, token: str, token_hash: str, entry: E, known: bool, *, fresh: bool = True) -> None:
        now = self._clock()
        ttl = self.ttl if known else self.unknown_ttl
        fresh_until = now + ttl
        if not fresh:
            # Read while invalidations may have been missed: the stale-if-error fallback only.
            # It is still the newest this process knows of the token: dropping it (as before)
            # left a validator that had just started with nothing to serve in an outage.
            fresh_until = 0.0
        elif self.coherent_for is not None and not self.coherent_for(token_hash):
            # Changes to it may be missed: kept as the stale-if-error fallback, fresh at most
            # `incoherent_ttl`.
            fresh_until = now + min(ttl, self.incoherent_ttl) if self.incoherent_ttl > 0 else 0.0
        if entry.lapses_at < math.inf:
            # An entry of its rules expires (a wall-clock instant): fresh until then at most, so a
            # hit needs no clock (benchmarks: hotpath, "expiring"); 1 ms early, for `fresh` still
            # serves an entry at its `fresh_until`. The one read after it drops the entry.
            fresh_until = min(fresh_until, now + (entry.lapses_at - model.wall_clock()) - 0.001)
        if entry.token_hash:
            entry = entry.copied()
        entry.token_hash = token_hash
        entry.fresh_until = fresh_until
        entry.usable_until = now + ttl + self.max_stale
        entry.recent = False
        lru, limit = (self._known, self.max_entries) if known else (self._unknown, self.max_unknown)
        self._drop(token)
        lru[token] = entry
        self._token_of[token_hash] = token
        while len(lru) > limit:
            key, evicted = lru.popitem(last=False)
            if evicted.recent:
                evicted.recent = False
                lru[key] = evicted  # a second chance, at the young end
                continue
            self.evictions += 1
            self._token_of.pop(evicted.token_hash, None)

    def _drop(self, token: str) -> None:
        entry = self._known.pop(token, None) or self._unknown.pop(token, None)
        if entry is not None:
            self._token_of.pop(entry.token_hash, None)

    def invalidate(self, token_hash: str) -> None:
        """Forget one token (named by its hash), including a read of it now in flight."""
        token = self._token_of.get(token_hash)
        if token is not None:
            self.invalidations += 1
            self._drop(token)
        load = self._loads_by_hash.get(token_hash)
        if load is not None:
            load.invalidated = True

    def expire_all(self, which: Callable[[str], bool] | None = None) -> None:
        """Trust nothing cached any more (with `which`: of the tokens whose hash it accepts):
        every such entry must be read again before it is served fresh, and such reads now in
        flight are cached as not fresh. Entries stay as the stale-if-error fallback, so an
        outage that started this still finds the last known decisions (docs/behaviour.md,
        "Stale-if-error")."""
        self.expirations += 1
        for lru in (self._known, self._unknown):
            for entry in lru.values():
                if which is None or which(entry.token_hash):
                    entry.fresh_until = 0.0
        for load in self._loads.values():
            if which is None or which(load.token_hash):
                load.expired = True

    def clear(self) -> None:
        """Forget everything, including reads now in flight."""
        self._known.clear()
        self._unknown.clear()
        self._token_of.clear()
        for load in self._loads.values():
            load.invalidated = True


def _wake(waiter: asyncio.Future[Any], outcome: object) -> None:
    """Settle one caller's future with a load's outcome (None: the read was cancelled)."""
    if outcome is None:
        waiter.cancel()
    elif isinstance(outcome, BaseException):
        waiter.set_exception(outcome)
    else:
        waiter.set_result(outcome)


def _start_awaitable(
    token_hash: str, read: Callable[[], Awaitable[Any]], settle: Callable[[Any], None]
) -> asyncio.AbstractEventLoop:
    """`Start` for `Cache.load`: `read()` in a task (a future is watched as it is)."""
    source = asyncio.ensure_future(read())
    source.add_done_callback(functools.partial(_settle_from, settle))
    return source.get_loop()


def _settle_from(settle: Callable[[Any], None], source: asyncio.Future[Any]) -> None:
    if source.cancelled():
        settle(None)
        return
    error = source.exception()  # retrieved here: no "never retrieved" log if nobody waits
    settle(error if error is not None else source.result())
