"""The Validator: `check()` = local cache -> store -> rules, kept coherent and fail-closed.

This module is the check itself: the hit path (`_hit`, written once: `check_cached`, `check`,
`screen_cached` and `screen` go through it), the miss path (`_miss`: a read, then the rules) and the
answer while the store fails (`_unavailable`). Its parts have rooms of their own: the store
reads (`validator.reads`), what runs beside the checks and how it starts and stops
(`validator.lifecycle`), the denial log (`validator.denials`).
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Unpack, cast

from validator.breaker import CircuitBreaker
from validator.cache import Cache
from validator.denials import DenialLog, Denied
from validator.errors import StoreUnavailable
from validator.lifecycle import Lifecycle
from validator.model import ALL_DECISIONS, Decision, Entry, Reason, decision, is_token, reported
from validator.options import split
from validator.reads import Reads
from validator.rules.decide import TokenRules, classify
from validator.settings import READ_LATENCY_BUCKETS, Settings, Stats, ValidatorOptions, checked
from validator.shards import Shards
from validator.store import Store, StoreOptions
from validator.store.invalidation import InvalidationListener

__all__ = ["READ_LATENCY_BUCKETS", "Denied", "Settings", "Stats", "Validator"]

_MALFORMED = decision(False, Reason.MALFORMED_TOKEN)
_NEVER = math.inf


class Validator:
    """Decides, per request, whether a token may be used from where the request comes from.

    Build it with `Validator.from_url(...)`, use it as `async with` (or `connect()`/`close()`),
    and call `check()`.
    """

    def __init__(self, store: Store, **settings: Unpack[Settings]) -> None:
        s = checked(settings)
        self.settings = s
        self.store = store
        self.fail_open = s["fail_open"]
        self.max_token_length = s["max_token_length"]
        self.require_marker = s["require_marker"]
        self.cache: Cache[TokenRules] = Cache(
            max_entries=s["cache_size"],
            max_unknown=s["unknown_cache_size"],
            ttl=s["ttl"],
            unknown_ttl=s["unknown_ttl"],
            max_stale=s["max_stale"],
            incoherent_ttl=s["incoherent_ttl"],
        )
        self.shards = Shards(
            store,
            lambda: CircuitBreaker(
                failure_threshold=s["breaker_threshold"], reset_timeout=s["breaker_reset"]
            ),
            expire=self.cache.expire_all,
            require_marker=self.require_marker,
            marker_interval=s["marker_interval"],
        )
        self.reads = Reads(
            store,
            self.shards,
            unknown_rules=TokenRules(None, unknown_allowed=s["unknown_token"] == "allow"),
            max_loads=s["max_concurrent_loads"],
            require_marker=self.require_marker,
        )
        # Statistics, read by `validator.metrics` (plain ints: the hot path can afford those).
        self._counts: dict[int, int] = dict.fromkeys(map(id, ALL_DECISIONS), 0)
        self._misses = 0
        self._failed_closed = 0
        self.denial_log: DenialLog | None = None
        if s["denial_log"]:
            self.denial_log = DenialLog(
                store,
                queue_size=s["denial_queue_size"],
                stream_length=s["denial_stream_length"],
                unknown_length=s["denial_unknown_length"],
                ttl=s["denial_ttl"],
                log_rate=s["denial_log_rate"],
            )
        self.lifecycle = Lifecycle(store, self.cache, self.shards, self.denial_log, s)
        self.reads.after_reads = self.lifecycle.after_reads

    @property
    def listener(self) -> InvalidationListener | None:
        """The invalidation listener (None without invalidation, or on the memory:// store)."""
        return self.lifecycle.listener

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker of the whole store: the only one on one server or a Sentinel
        master; on a Cluster, that of the slots no known primary serves (each primary has its
        own: `shards`)."""
        return self.shards.whole.breaker

    @breaker.setter
    def breaker(self, breaker: CircuitBreaker) -> None:
        self.shards.whole.breaker = breaker

    @classmethod
    def from_url(cls, url: str = "memory://", **options: Unpack[ValidatorOptions]) -> Validator:
        """A validator on the store at `url` (see `Store.from_url`), with the store's options
        (`StoreOptions`: `secret`, `key_prefix`, `limit`, timeouts) and `Settings`.

        `secret` keys the token hash (default: the VALIDATOR_SECRET environment variable) and
        must be the same for the validator and the admin tools.
        """
        store_options, settings = split(options, StoreOptions)
        checked(cast(Settings, settings))  # refused before any connection is made
        store = Store.from_url(url, **store_options)
        return cls(store, **settings)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Validator:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start what runs beside the checks: the invalidation listener, the denial log writer,
        the eviction-policy check. Idempotent and synchronous, so the first `check()` calls it
        itself and a thousand concurrent first requests cannot race: nobody has to remember it.
        Needs a running event loop."""
        self.lifecycle.start()

    async def connect(self, *, wait: float | None = 1.0) -> None:
        """`start()`, then wait up to `wait` seconds for the invalidation listener (and the
        eviction-policy check) so that the first checks are already coherent.

        Optional: `check()` starts the validator itself. An unreachable store is not an error
        here: checks fail closed until it answers.
        """
        await self.lifecycle.connect(wait)

    async def close(self) -> None:
        """Stop listening and release connections (a later `check()` starts again).

        Returns within 1 s whatever Redis does (docs/behaviour.md, "Lifecycle"): the background
        tasks are stopped together, each within its own bound, then the connections are cut."""
        await self.lifecycle.close()

    async def sync(self, timeout: float = 5.0) -> None:
        """Wait until every change stored before this call has reached this process's cache.

        Invalidations from one Redis node arrive in the order it executed the changes, so
        writing a key of our own on every node subscribed to (one per Cluster primary) and
        waiting for their invalidations is a barrier. Raises `StoreUnavailable` when the
        invalidation connection is down or the barrier does not come back within `timeout`.
        """
        await self.lifecycle.sync(timeout)

    # ------------------------------------------------------------------ checks

    def check_cached(
        self,
        token: str,
        *,
        origin: str | None = None,
        referer: str | None = None,
        sec_fetch: bool = False,
        client_ip: str | None = None,
        report_only: bool = False,
    ) -> Decision | None:
        """The decision from the local cache alone, or None when the token is not cached fresh.

        Synchronous: the fast path for callers that can skip an `await` on a hit. The arguments
        are those of `check`.
        """
        result = self._hit(token, origin, referer, sec_fetch, client_ip, report_only)
        return result[0] if isinstance(result, tuple) else result

    async def check(
        self,
        token: str,
        *,
        origin: str | None = None,
        referer: str | None = None,
        sec_fetch: bool = False,
        client_ip: str | None = None,
        report_only: bool = False,
    ) -> Decision:
        """Decide one request made with `token`.

        `origin` and `referer` are the header values (None when absent), `sec_fetch` whether
        any `Sec-Fetch-*` header was present, `client_ip` the client's address as text.
        `report_only` lets a denial through as a reported one (a rollout for every token; one
        token is put in report-only mode with `Admin.set_mode`).
        A token that is not 1 to `max_token_length` visible ASCII characters was never issued:
        denied (`Reason.MALFORMED_TOKEN`, even with `report_only`) without a read.
        Raises `StoreUnavailable` when the store cannot be read and nothing usable is cached
        (unless `fail_open`).
        """
        # Not `await self.screen(...)`: a coroutine less on every cached `await check()`
        # (~200 ns, benchmarks: hotpath).
        result = self._hit(token, origin, referer, sec_fetch, client_ip, report_only)
        if result is None:
            result = await self._miss(token, origin, referer, sec_fetch, client_ip, report_only)
        return result[0] if isinstance(result, tuple) else result

    def screen_cached(
        self,
        token: str,
        *,
        origin: str | None = None,
        referer: str | None = None,
        sec_fetch: bool = False,
        client_ip: str | None = None,
        report_only: bool = False,
    ) -> Decision | Denied | None:
        """`check_cached`, for a face that answers the request: see `screen`."""
        return self._hit(token, origin, referer, sec_fetch, client_ip, report_only)

    async def screen(
        self,
        token: str,
        *,
        origin: str | None = None,
        referer: str | None = None,
        sec_fetch: bool = False,
        client_ip: str | None = None,
        report_only: bool = False,
    ) -> Decision | Denied:
        """`check`, for a face that answers the request: a decision the denial log took (a
        denial, or a reported one) comes back as `Denied`, the pair (decision, what the log took
        of it), which the reply's `Access-Denied-Ref` is made of (`DenialLog.ref`)."""
        result = self._hit(token, origin, referer, sec_fetch, client_ip, report_only)
        if result is None:
            result = await self._miss(token, origin, referer, sec_fetch, client_ip, report_only)
        return result

    # The request's fields by position, unlike the public methods (a call by keyword cost ~25-90 ns
    # more, timeit on CPython 3.11): every check makes one of these calls.
    def _hit(  # noqa: PLR0917
        self,
        token: str,
        origin: str | None,
        referer: str | None,
        sec_fetch: bool,
        client_ip: str | None,
        report_only: bool,
    ) -> Decision | Denied | None:
        """The hit path, the one copy of it: the decision from a fresh cache entry, or None."""
        entry = self.cache.fresh(token)
        if entry is None:
            return None
        result = entry.decide(origin, referer, sec_fetch, client_ip)
        if result.allowed:
            if not result.reported:
                # Counting by id: a Decision is a shared constant, and hashing the Struct costs more.
                self._counts[id(result)] += 1
                return result
        elif not report_only and (denials := self.denial_log) is not None and denials.dropping:
            # `_decided` for a denial in a flood (the denial log only counts it), without the
            # call: ~80 ns of a denied check (benchmarks: hotpath, back-end deny).
            self._counts[id(result)] += 1
            denials.dropped += 1
            return result, entry
        return self._decided(entry, result, report_only, origin or referer, client_ip)

    # The hit path for the faces that answer the request (`TokenAccessMiddleware`): `screen_cached`
    # with the request's fields by position, in `_hit`'s order (token, origin, referer, sec_fetch,
    # client_ip, report_only). Public so that another package may call it; every other caller
    # should use the keyword-only methods above, whose names say what each argument is.
    screen_hit = _hit

    async def _miss(  # noqa: PLR0917  # as `_hit`
        self,
        token: str,
        origin: str | None,
        referer: str | None,
        sec_fetch: bool,
        client_ip: str | None,
        report_only: bool,
    ) -> Decision | Denied:
        self._misses += 1
        if not self.lifecycle.started:
            # Only a miss can be a first use (a hit needs an earlier miss), so hits pay nothing.
            self.lifecycle.start()
        if not is_token(token, self.max_token_length):
            # No such token was ever issued (docs/behaviour.md): no read, nothing cached, nothing for the
            # denial log to keep. Only misses pay this: a cached token passed it to be cached.
            self._counts[id(_MALFORMED)] += 1
            return _MALFORMED
        error: StoreUnavailable | None = None
        shards = self.shards
        # With one shard (one server, a Sentinel master) its breaker is asked before the token is
        # hashed: while the store is down a check costs no HMAC (~1 us, benchmarks: outage).
        if not (shards.single and shards.whole.breaker.blocked()):
            token_hash = self.store.token_hash(token)
            shard = shards.of(token_hash)
            if not shard.breaker.blocked():
                try:
                    # The read settles the cache's load itself, in the pass that parsed its reply
                    # (`Cache.start_load`, `Reads.start`): no partial, no coroutine in between.
                    rules = await self.cache.start_load(token, token_hash, self.reads.start, shard)
                except StoreUnavailable as failure:
                    error = failure
                else:
                    if rules.lapses_at < _NEVER:
                        rules = rules.current()  # an entry may have lapsed since the read
                    result = rules.decide(origin, referer, sec_fetch, client_ip)
                    return self._decided(token_hash, result, report_only, origin or referer, client_ip)
        # The store is failing (if the breaker is open: answered now, without a read or a timeout).
        stale = self.cache.usable(token)
        if stale is not None:
            # Past its freshness: without the entries that have lapsed since (an outage never
            # revives an expired entry).
            result = stale.value.current().decide(origin, referer, sec_fetch, client_ip)
            return self._decided(stale.token_hash, result, report_only, origin or referer, client_ip)
        if self.fail_open:
            result = decision(True, Reason.STORE_UNAVAILABLE, classify(origin, referer, sec_fetch))
            self._counts[id(result)] += 1
            return result
        self._failed_closed += 1
        if error is None:
            error = StoreUnavailable("restriction store failing: circuit open, not waiting for it")
        raise error

    def _decided(
        self, token: str | Entry, result: Decision, report_only: bool, url: str | None, client_ip: str | None
    ) -> Decision | Denied:
        """Count `result`, the rules' decision for `token` (its hash, or its cache entry); a
        denial (or a reported one) goes to the denial log, and comes back `Denied`."""
        if report_only and not result.allowed:
            result = reported(result)
        self._counts[id(result)] += 1
        denials = self.denial_log
        if denials is None or (result.allowed and not result.reported):
            return result
        if denials.dropping:
            # What `record` would do (a full queue, no log line due), without the call: ~150 ns
            # of a denied check in a flood (`DenialLog.dropping`).
            denials.dropped += 1
            return result, token
        return result, denials.record(token, result, url, client_ip)

    # ------------------------------------------------------------------ statistics

    @property
    def stats(self) -> Stats:
        """A read-only snapshot of this validator's counters (`validator.metrics` exports them)."""
        reads = self.reads
        return Stats(
            decisions={d: self._counts[id(d)] for d in ALL_DECISIONS},
            misses=self._misses,
            failed_closed=self._failed_closed,
            store_errors=reads.errors,
            read_latency_sum=reads.latency_sum,
            read_latency_counts=tuple(reads.latency_counts),
        )
