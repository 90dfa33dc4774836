"""The Validator: `check()` = local cache -> store -> rules, kept coherent and fail-closed."""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import logging
import math
import time
import uuid
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, Unpack

from validator.breaker import BreakerState, CircuitBreaker
from validator.cache import Cache
from validator.denials import DenialLog
from validator.errors import StoreUnavailable, StoreUnmarked
from validator.model import (
    ALL_DECISIONS,
    Decision,
    Reason,
    Restrictions,
    decision,
    is_token,
    reported,
)
from validator.rules.decide import TokenRules, classify, compile_rules
from validator.settings import READ_LATENCY_BUCKETS, Settings, Stats, checked
from validator.shards import Shard, Shards
from validator.store import DEFAULT_KEY_PREFIX, Store, UnreadableRecord, fingerprint, parse_read, wrong_type
from validator.store.invalidation import InvalidationListener

__all__ = ["READ_LATENCY_BUCKETS", "Settings", "Stats", "Validator"]

log = logging.getLogger("validator")

_MALFORMED = decision(False, Reason.MALFORMED_TOKEN)
_NEVER = math.inf
# How long `close()` waits for a background read to end after cancelling it, and for the
# connections to close.
_CLOSE_WAIT = 0.2


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
        self._unknown_rules = TokenRules(None, unknown_allowed=s["unknown_token"] == "allow")
        # Distinct cold tokens each need a read; this bounds how many run at once, so a flood
        # of random tokens queues here instead of piling onto Redis.
        self._load_slots = asyncio.Semaphore(s["max_concurrent_loads"])
        self._max_loads = s["max_concurrent_loads"]
        self._fast_reads = 0
        # Fast reads waiting for one of the `max_concurrent_loads` fast slots, started as others
        # finish (`_finish_read`). Sending them down the general path instead cost its task,
        # coroutine and semaphore to every read beyond the bound: with 100 concurrent cold checks,
        # a third of them (benchmarks: miss).
        self._queued_reads: collections.deque[tuple[str, Shard, asyncio.Future[tuple[TokenRules, bool]]]] = (
            collections.deque()
        )
        self._read_loop: asyncio.AbstractEventLoop  # that of the fast reads in flight
        # Statistics, read by `validator.metrics` (plain ints: the hot path can afford those).
        self._counts: dict[int, int] = dict.fromkeys(map(id, ALL_DECISIONS), 0)
        self._misses = 0
        self._failed_closed = 0
        self._store_errors = 0
        self._read_latency_sum = 0.0
        self._read_latency_counts = [0] * (len(READ_LATENCY_BUCKETS) + 1)
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
        self.listener: InvalidationListener | None = None
        if s["invalidation"] and store.topology is not None:
            self.listener = InvalidationListener(
                store.topology,
                store.key_prefix,
                on_keys=self._on_keys,
                on_layout=self.shards.on_layout,
                on_up=self._on_up,
                on_down=self.shards.on_down,
                ping_interval=s["ping_interval"],
                ping_timeout=s["ping_timeout"],
                topology_interval=s["topology_interval"],
            )
            self.cache.coherent_for = lambda token_hash: self.shards.of(token_hash).coherent
        self._barriers: dict[str, asyncio.Future[None]] = {}
        self._started = False
        self._closed = False
        self._eviction_check: asyncio.Future[None] | None = None
        self._late_close: asyncio.Future[None] | None = None  # see the end of `close`
        self._reads = 0  # `_read` calls under way
        # Hashes of tokens whose unreadable record was logged: once each, until read again.
        self._unreadable_logged: set[str] = set()

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
    def from_url(
        cls,
        url: str = "memory://",
        *,
        secret: str | bytes | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        limit: int = 5,
        timeout: float = 0.5,
        connect_timeout: float = 0.5,
        **settings: Unpack[Settings],
    ) -> Validator:
        """A validator on the store at `url` (see `Store.from_url`), with `Settings`.

        `secret` keys the token hash (default: the VALIDATOR_SECRET environment variable) and
        must be the same for the validator and the admin tools.
        """
        store = Store.from_url(
            url,
            secret=secret,
            key_prefix=key_prefix,
            limit=limit,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        return cls(store, **settings)

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
        if self._started:
            return
        if self._closed:
            self.store.reopen()
            self._closed = False
        self._started = True
        self.store.local_listeners.append(self.cache.invalidate)
        if self.denial_log is not None:
            self.denial_log.start()
        if self.listener is not None:
            self.listener.start()
        # An evicted record is a token left unrestricted: say so at start ("eviction is a wipe").
        self._eviction_check = asyncio.ensure_future(self.store.log_eviction_risk())
        self._eviction_check.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def connect(self, *, wait: float | None = 1.0) -> None:
        """`start()`, then wait up to `wait` seconds for the invalidation listener (and the
        eviction-policy check) so that the first checks are already coherent.

        Optional: `check()` starts the validator itself. An unreachable store is not an error
        here: checks fail closed until it answers.
        """
        self.start()
        if self._eviction_check is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._eviction_check)
        if self.listener is not None and wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.listener.connected.wait(), wait)

    async def close(self) -> None:
        """Stop listening and release connections (a later `check()` starts again).

        Returns within 1 s whatever Redis does (docs/behaviour.md, "Lifecycle"): the background
        tasks are stopped together, each within its own bound, then the connections are cut."""
        self._started = False
        self._closed = True
        with contextlib.suppress(ValueError):
            self.store.local_listeners.remove(self.cache.invalidate)
        # Background reads must end before the connections they would open are released:
        # a marker check still running after `store.close()` would leave its connections open.
        background = [t for t in (self._eviction_check,) if t is not None and not t.done()]
        self._eviction_check = None
        for task in background:
            task.cancel()
        stopping: list[Awaitable[object]] = [self.shards.close()]  # its marker reads: ~0.2 s at most
        if background:
            stopping.append(asyncio.wait(background, timeout=_CLOSE_WAIT))
        if self.listener is not None:
            stopping.append(self.listener.stop())  # at most ~0.4 s
        if self.denial_log is not None:
            stopping.append(self.denial_log.stop())  # at most ~0.4 s: what is queued, then cancelled
        await asyncio.gather(*stopping)
        closing = asyncio.ensure_future(self.store.close())
        done, _ = await asyncio.wait({closing}, timeout=_CLOSE_WAIT)
        if not done:
            # Connections to a frozen server that do not close politely: left to their timeouts.
            closing.add_done_callback(lambda t: t.cancelled() or t.exception())
            log.debug("store connections did not close within %.1f s; leaving them", _CLOSE_WAIT)
        else:
            closing.result()
        # A background task that outlived its bound (a read that ignored its cancellation) may
        # open connections again after they were closed (redis-py's RedisCluster reconnects, and
        # re-reads its slot map, on its next command): once the last of them ends, close again.
        late: list[asyncio.Future[Any]] = [*background, *self.shards.tasks()]
        if self.listener is not None:
            late += self.listener.tasks()
        if self.denial_log is not None:
            late += self.denial_log.tasks()
        late = [task for task in late if not task.done()]
        if late:
            # Most end at once now that their connections are cut: close again before returning.
            _, pending = await asyncio.wait(late, timeout=_CLOSE_WAIT)
            if len(pending) < len(late):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self.store.close()), _CLOSE_WAIT)
            late = list(pending)
        if late:
            log.debug("%d background tasks still ending after close(); closing again after them", len(late))
            self._close_later(late)

    def _close_later(self, tasks: list[asyncio.Future[Any]]) -> None:
        """Close the store again once `tasks` (and the one closing it now, if any) ended."""
        if self._late_close is not None and not self._late_close.done():
            tasks = [*tasks, self._late_close]
        self._late_close = asyncio.ensure_future(self._close_after(tasks))
        self._late_close.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _close_after(self, tasks: list[asyncio.Future[Any]]) -> None:
        if tasks:
            await asyncio.wait(tasks)
        if self._closed:  # not started again meanwhile (a new start uses the connections)
            with contextlib.suppress(Exception):
                await self.store.close()

    # ------------------------------------------------------------------ invalidation events

    def _on_keys(self, keys: list[str]) -> None:
        for key in keys:
            token_hash = self.store.hash_of_key(key)
            if token_hash is not None:
                # Only the restriction keys matter; the history list changes with them anyway.
                if not key.endswith(":h"):
                    self.cache.invalidate(token_hash)
            elif key in self._barriers:
                barrier = self._barriers.pop(key)
                if not barrier.done():
                    barrier.set_result(None)
            elif self.require_marker and self.store.is_marker_key(key):
                # Which primaries a change of the marker concerns does not matter: each shard
                # reads its own again (one read each, shared).
                self.shards.marker_changed()
                for shard in self.shards.all():
                    self.shards.schedule_verify(shard)

    def _on_up(self, node: str) -> None:
        assert self.listener is not None
        self.shards.on_up(node, self.listener.connected.is_set())

    async def sync(self, timeout: float = 5.0) -> None:
        """Wait until every change stored before this call has reached this process's cache.

        Invalidations from one Redis node arrive in the order it executed the changes, so
        writing a key of our own on every node subscribed to (one per Cluster primary) and
        waiting for their invalidations is a barrier. Raises `StoreUnavailable` when the
        invalidation connection is down or the barrier does not come back within `timeout`.
        """
        if self.listener is None:
            return
        if not self.listener.connected.is_set():
            raise StoreUnavailable("no invalidation connection: the cache cannot be synchronised")
        name = f"{self.store.key_prefix}sync:{uuid.uuid4().hex}"
        keys = [name + tag for tag in await self.store.shard_tags(self.listener.nodes)]
        if not keys:
            raise StoreUnavailable("no invalidation connection: the cache cannot be synchronised")
        loop = asyncio.get_running_loop()
        barriers = {key: loop.create_future() for key in keys}
        self._barriers.update(barriers)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self.store.touch(key) for key in keys))
                await asyncio.gather(*barriers.values())
        except TimeoutError:
            raise StoreUnavailable(f"invalidations did not arrive within {timeout}s") from None
        finally:
            for key in keys:
                self._barriers.pop(key, None)

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
        entry = self.cache.fresh(token)
        if entry is None:
            return None
        # The hit path, written out here and in `check` (it is `_decided` for an entry): a call
        # less is ~50 ns, ~5-8% of a cached check (benchmarks: hotpath).
        result = entry.decide(origin, referer, sec_fetch, client_ip)
        if not result.allowed or result.reported:
            if report_only and not result.allowed:
                result = reported(result)
            denials = self.denial_log
            if denials is not None:
                if denials.dropping:
                    # What `record` would do (a full queue, no log line due), without the call:
                    # ~150 ns of a denied check in a flood (`DenialLog.dropping`).
                    denials.dropped += 1
                    denials.last = entry  # for the reply's reference (`DenialLog.ref`)
                else:
                    denials.record(entry, result, origin or referer, client_ip)
        # Counting by id: a Decision is a shared constant, and hashing the Struct costs more.
        self._counts[id(result)] += 1
        return result

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
        entry = self.cache.fresh(token)
        if entry is not None:
            result = entry.decide(origin, referer, sec_fetch, client_ip)  # check_cached's hit path
            if not result.allowed or result.reported:
                if report_only and not result.allowed:
                    result = reported(result)
                denials = self.denial_log
                if denials is not None:
                    if denials.dropping:
                        denials.dropped += 1  # as in `check_cached`
                        denials.last = entry
                    else:
                        denials.record(entry, result, origin or referer, client_ip)
            self._counts[id(result)] += 1
            return result
        self._misses += 1
        if not self._started:
            # Only a miss can be a first use (a hit needs an earlier miss), so hits pay nothing.
            self.start()
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
                    # A partial, not a lambda: a closure made `self`, `token_hash` and `shard`
                    # cells of this coroutine, built on every call, hits included (~200 ns of a
                    # cached `await check()`, benchmarks: hotpath).
                    rules = await self.cache.load(
                        token, token_hash, functools.partial(self._start_read, token_hash, shard)
                    )
                except StoreUnavailable as failure:
                    error = failure
                else:
                    if rules.lapses_at < _NEVER:
                        rules = rules.current()  # an entry may have lapsed since the read
                    result = rules.decide(origin, referer, sec_fetch, client_ip)
                    return self._decided(token_hash, result, report_only, origin or referer, client_ip)
        # The store is failing (if the breaker is open: answered now, without a read or a timeout).
        return self._unavailable(
            token,
            error,
            report_only,
            origin=origin,
            referer=referer,
            sec_fetch=sec_fetch,
            client_ip=client_ip,
        )

    def _decided(
        self, token_hash: str, result: Decision, report_only: bool, url: str | None, client_ip: str | None
    ) -> Decision:
        if not result.allowed or result.reported:
            if report_only and not result.allowed:
                result = reported(result)
            if self.denial_log is not None:
                self.denial_log.record(token_hash, result, url, client_ip)
        self._counts[id(result)] += 1
        return result

    def _unavailable(
        self,
        token: str,
        error: StoreUnavailable | None,
        report_only: bool,
        *,
        origin: str | None,
        referer: str | None,
        sec_fetch: bool,
        client_ip: str | None,
    ) -> Decision:
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

    # ------------------------------------------------------------------ statistics

    @property
    def stats(self) -> Stats:
        """A read-only snapshot of this validator's counters (`validator.metrics` exports them)."""
        return Stats(
            decisions={d: self._counts[id(d)] for d in ALL_DECISIONS},
            misses=self._misses,
            failed_closed=self._failed_closed,
            store_errors=self._store_errors,
            read_latency_sum=self._read_latency_sum,
            read_latency_counts=tuple(self._read_latency_counts),
        )

    def _observe_read(self, started: float) -> None:
        elapsed = time.monotonic() - started
        self._read_latency_sum += elapsed
        self._read_latency_counts[bisect.bisect_left(READ_LATENCY_BUCKETS, elapsed)] += 1

    def _start_read(self, token_hash: str, shard: Shard) -> Awaitable[tuple[TokenRules, bool]]:
        # The common case, a sound shard whose invalidations arrive and whose breaker is closed,
        # reads through a plain future chained to the multiplexed connection: no task, no
        # coroutine (benchmarks: miss). Everything else takes the general path, `_read`.
        if self._fast_reads >= self._max_loads and self._fast_eligible(shard):
            # Every fast slot taken: wait for one (bounded, as the general path's semaphore is).
            # On the loop of the fast reads in flight (there are some): `asyncio.get_running_loop()`
            # makes a getpid() call on 3.11, ~5% of a miss here.
            result: asyncio.Future[tuple[TokenRules, bool]] = self._read_loop.create_future()
            self._queued_reads.append((token_hash, shard, result))
            return result
        fast = self._fast_read(token_hash, shard)
        return fast if fast is not None else self._read(token_hash, shard)

    @staticmethod
    def _fast_eligible(shard: Shard) -> bool:
        return shard.coherent and shard.sound is True and shard.breaker.state is BreakerState.CLOSED

    def _fast_read(
        self,
        token_hash: str,
        shard: Shard,
        result: asyncio.Future[tuple[TokenRules, bool]] | None = None,
    ) -> asyncio.Future[tuple[TokenRules, bool]] | None:
        """Start a fast read settling `result` (default: a new future, returned), or None if the
        read cannot be fast (the shard is not sound, no slot, no connection): `_read` then."""
        if self._fast_reads >= self._max_loads or not self._fast_eligible(shard):
            return None
        try:
            raw = self.store.read_now(token_hash)
        except Exception as error:  # a transport closed under us: the general path reports it
            log.debug("fast read not started: %r", error)
            return None
        if raw is None:
            return None
        self._fast_reads += 1
        # The reply's loop, not `asyncio.get_running_loop()`: a getpid() call on 3.11.
        self._read_loop = raw.get_loop()
        if result is None:
            result = self._read_loop.create_future()
        raw.add_done_callback(
            functools.partial(self._finish_read, token_hash, shard, result, time.monotonic())
        )
        return result

    def _start_queued(self) -> None:
        """Start the oldest queued read, now that a fast slot is free (the general path if it
        can no longer be fast)."""
        token_hash, shard, result = self._queued_reads.popleft()
        if self._fast_read(token_hash, shard, result) is None:
            fallback = asyncio.ensure_future(self._read(token_hash, shard))
            fallback.add_done_callback(functools.partial(_copy_outcome, result))

    def _finish_read(
        self,
        token_hash: str,
        shard: Shard,
        result: asyncio.Future[tuple[TokenRules, bool]],
        started: float,
        raw: asyncio.Future[Any],
    ) -> None:
        self._fast_reads -= 1
        self._observe_read(started)
        if self._queued_reads:
            self._start_queued()
        if raw.cancelled():
            # No answer and no trial taken (fast reads start only with the breaker closed):
            # nothing to report to the breaker.
            _settle(result, StoreUnavailable("restriction store read cancelled"))
            return
        error = raw.exception()
        if error is not None and self.store.read_again(token_hash, error):
            # A restarted Redis lost the script, or the cluster or the sentinels sent the
            # read elsewhere: the general path loads the script again, or uses redis-py.
            fallback = asyncio.ensure_future(self._read(token_hash, shard))
            fallback.add_done_callback(functools.partial(_copy_outcome, result))
            return
        try:
            if error is not None:
                raise StoreUnavailable(f"restriction store unavailable: {error}") from error
            outcome = self._outcome(token_hash, parse_read(raw.result()))
        except Exception as failure:
            _settle(result, self._read_failed(token_hash, shard, failure))
        else:
            shard.breaker.success()
            _settle(result, outcome)

    async def _read(self, token_hash: str, shard: Shard) -> tuple[TokenRules, bool]:
        self._reads += 1
        try:
            return await self._read_counted(token_hash, shard)
        finally:
            self._reads -= 1
            if not self._reads and self._closed:
                # A read that outlived `close()` (redis-py's RedisCluster follows a dead node by
                # re-reading the slot map and reconnecting, after the store was closed): close
                # the connections it opened.
                self._close_later([])

    async def _read_counted(self, token_hash: str, shard: Shard) -> tuple[TokenRules, bool]:
        async with self._load_slots:
            if not shard.breaker.allow():
                raise StoreUnavailable("restriction store failing: circuit open, not waiting for it")
            started = time.monotonic()
            # Every way out settles the breaker: a trial that reported nothing would leave it
            # half-open, failing every uncached check closed until the process restarts.
            try:
                await self.shards.ensure_sound(shard)
                outcome = self._outcome(token_hash, await self.store.read(token_hash))
            except Exception as error:
                failure = self._read_failed(token_hash, shard, error)
                if failure is error:
                    raise
                raise failure from error
            except BaseException as error:
                current = asyncio.current_task()
                if isinstance(error, asyncio.CancelledError) and current and not current.cancelling():
                    # Cancelled inside the store client, not by our caller: a failed read.
                    raise self._read_failed(token_hash, shard, error) from error
                # Cancelled: no outcome. If this was the trial, the next read may be one at once.
                shard.breaker.release()
                raise
            else:
                shard.breaker.success()
                return outcome
            finally:
                self._observe_read(started)

    def _outcome(self, token_hash: str, restrictions: Restrictions | None) -> tuple[TokenRules, bool]:
        if restrictions is None:
            return self._unknown_rules, False
        try:
            rules = compile_rules(restrictions)
        except Exception as error:
            # An entry edited by hand into something no admin command stores (`host:port` with
            # a port that is not a number): the record cannot be enforced as meant.
            raise UnreadableRecord(f"an entry does not parse: {error}", token_hash) from error
        if self._unreadable_logged:
            self._unreadable_logged.discard(token_hash)
        return rules, True

    def _read_failed(self, token_hash: str, shard: Shard, error: BaseException) -> StoreUnavailable:
        """Report a failed read to the shard's breaker; the error for the caller."""
        if isinstance(error, StoreUnmarked):
            # The store answered, so the circuit has nothing to open for: the marker check
            # alone fails checks closed, and re-reads the marker until an `init` or a restore.
            shard.breaker.success()
            return error
        self._store_errors += 1
        if isinstance(error, UnreadableRecord) or wrong_type(error):
            # One token's record, not the store: one bad record must not open the circuit for
            # every token.
            shard.breaker.success()
            return self._unreadable(token_hash, error)
        shard.breaker.failure()
        if self.require_marker:
            # The node may come back wiped (restarted without persistence): read its marker
            # again before trusting its next answer.
            self.shards.marker_changed(shard)
        if isinstance(error, StoreUnavailable):
            return error
        log.error("unexpected error reading the restriction store", exc_info=error)
        return StoreUnavailable(f"unexpected error reading the restriction store: {error!r}")

    def _unreadable(self, token_hash: str, error: BaseException) -> UnreadableRecord:
        reason = error.reason if isinstance(error, UnreadableRecord) else "a key of another type: WRONGTYPE"
        if token_hash not in self._unreadable_logged:
            if len(self._unreadable_logged) >= _UNREADABLE_LOG_MEMORY:
                self._unreadable_logged.clear()
            self._unreadable_logged.add(token_hash)
            log.error(
                "unreadable record of token %s in the restriction store (%s): its checks are "
                "refused as on a store failure until the record is fixed, or deleted and stored again",
                fingerprint(token_hash),
                reason,
            )
        return UnreadableRecord(reason, token_hash)


# How many tokens with an unreadable record are remembered as logged (beyond: logged again).
_UNREADABLE_LOG_MEMORY = 1000


def _settle(target: asyncio.Future[Any], outcome: Any) -> None:
    if target.done():
        return
    if isinstance(outcome, BaseException):
        target.set_exception(outcome)
    else:
        target.set_result(outcome)


def _copy_outcome(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    if source.cancelled():
        _settle(target, StoreUnavailable("restriction store read cancelled"))
    else:
        _settle(target, source.exception() or source.result())
