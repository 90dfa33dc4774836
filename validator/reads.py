"""The validator's store reads: a cold token's record read, compiled and classified.

Two paths. The fast one, for a sound shard whose invalidations arrive and whose breaker is
closed, reads through a plain future chained to the multiplexed connection: no task, no
coroutine (benchmarks: miss), at most `max_loads` at once, the rest queued. The general one
(`Reads.read`) is a coroutine behind a semaphore that also asks the breaker, checks the shard's
marker and reloads the script. Both end in the same failure classification (`Reads.failed`):
what a failed read tells the shard's breaker, and what the caller raises.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from validator.breaker import BreakerState
from validator.errors import StoreUnavailable, StoreUnmarked
from validator.model import Restrictions
from validator.rules.decide import TokenRules, compile_rules, plain_rules
from validator.settings import READ_LATENCY_BUCKETS
from validator.shards import Shard, Shards
from validator.store import Store, UnreadableRecord, common_record, fingerprint, parse_read, wrong_type

__all__ = ["Outcome", "Reads"]

log = logging.getLogger("validator")

# What a read gives the cache: the token's rules, and whether the token has a stored record.
Outcome = tuple[TokenRules, bool]
# What a read calls once it is over: with its outcome, the error to raise, or None (cancelled).
Settle = Callable[[Outcome | BaseException | None], None]

# How many tokens with an unreadable record are remembered as logged (beyond: logged again).
_UNREADABLE_LOG_MEMORY = 1000


class Reads:
    """Reads records for the validator's cache misses, bounded, and counts them (`Stats`)."""

    def __init__(
        self,
        store: Store,
        shards: Shards,
        *,
        unknown_rules: TokenRules,
        max_loads: int,
        require_marker: bool,
    ) -> None:
        self.store = store
        self.shards = shards
        self.require_marker = require_marker
        self._unknown_rules = unknown_rules
        # Distinct cold tokens each need a read; this bounds how many run at once, so a flood
        # of random tokens queues here instead of piling onto Redis.
        self._load_slots = asyncio.Semaphore(max_loads)
        self._max_loads = max_loads
        self.in_flight = 0  # fast reads started and not finished
        self.reading = 0  # general-path reads under way
        # Called when the last general-path read ends (`Lifecycle.after_reads`).
        self.after_reads: Callable[[], None] | None = None
        # Fast reads waiting for one of the `max_loads` fast slots, started as others finish
        # (`_finish`). Sending them down the general path instead cost its task, coroutine and
        # semaphore to every read beyond the bound: with 100 concurrent cold checks, a third of
        # them (benchmarks: miss).
        self.queued: collections.deque[tuple[str, Shard, Settle]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop  # that of the fast reads in flight
        # Statistics, read by `Validator.stats` (plain ints: the read path can afford those).
        self.errors = 0
        self.latency_sum = 0.0
        self.latency_counts = [0] * (len(READ_LATENCY_BUCKETS) + 1)
        # Hashes of tokens whose unreadable record was logged: once each, until read again.
        self._unreadable_logged: set[str] = set()

    def start(self, token_hash: str, shard: Shard, settle: Settle) -> asyncio.AbstractEventLoop:
        """Start reading the record of `token_hash` on `shard`, calling `settle` once with its
        outcome, its error or None (cancelled): the cache's `Start` (`Cache.start_load`)."""
        # The common case, a sound shard whose invalidations arrive and whose breaker is closed,
        # reads through the multiplexed connection, and the reply's callback settles the cache's
        # load in the pass that parsed it: no task, no coroutine, no future of its own
        # (benchmarks: miss). Everything else takes the general path, `read`.
        if self.in_flight >= self._max_loads and _fast_eligible(shard):
            # Every fast slot taken: wait for one (bounded, as the general path's semaphore is).
            # On the loop of the fast reads in flight (there are some): `asyncio.get_running_loop()`
            # makes a getpid() call on 3.11, ~5% of a miss here.
            self.queued.append((token_hash, shard, settle))
            return self._loop
        if self._fast(token_hash, shard, settle):
            return self._loop
        return self._general(token_hash, shard, settle, _settle_general)

    def _general(
        self,
        token_hash: str,
        shard: Shard,
        settle: Settle,
        done: Callable[[Settle, asyncio.Future[Outcome]], None],
    ) -> asyncio.AbstractEventLoop:
        task = asyncio.ensure_future(self.read(token_hash, shard))
        task.add_done_callback(functools.partial(done, settle))
        return task.get_loop()

    def _fast(self, token_hash: str, shard: Shard, settle: Settle) -> bool:
        """Start a fast read settling `settle`; False if the read cannot be fast (the shard is
        not sound, no slot, no connection): `read` then."""
        if self.in_flight >= self._max_loads or not _fast_eligible(shard):
            return False
        try:
            raw = self.store.read_now(token_hash)
        except Exception as error:  # a transport closed under us: the general path reports it
            log.debug("fast read not started: %r", error)
            return False
        if raw is None:
            return False
        self.in_flight += 1
        # The reply's loop, not `asyncio.get_running_loop()`: a getpid() call on 3.11.
        self._loop = raw.get_loop()
        raw.add_done_callback(functools.partial(self._finish, token_hash, shard, settle, time.monotonic()))
        return True

    def _start_queued(self) -> None:
        """Start the oldest queued read, now that a fast slot is free (the general path if it
        can no longer be fast)."""
        token_hash, shard, settle = self.queued.popleft()
        if not self._fast(token_hash, shard, settle):
            self._general(token_hash, shard, settle, _settle_fallback)

    def _finish(
        self,
        token_hash: str,
        shard: Shard,
        settle: Settle,
        started: float,
        raw: asyncio.Future[Any],
    ) -> None:
        self.in_flight -= 1
        elapsed = time.monotonic() - started  # `_observe`, inline: every miss comes here
        self.latency_sum += elapsed
        self.latency_counts[bisect.bisect_left(READ_LATENCY_BUCKETS, elapsed)] += 1
        if self.queued:
            self._start_queued()
        if raw.cancelled():
            # No answer and no trial taken (fast reads start only with the breaker closed):
            # nothing to report to the breaker.
            settle(StoreUnavailable("restriction store read cancelled"))
            return
        error = raw.exception()
        if error is not None and self.store.read_again(token_hash, error):
            # A restarted Redis lost the script, or the cluster or the sentinels sent the
            # read elsewhere: the general path loads the script again, or uses redis-py.
            self._general(token_hash, shard, settle, _settle_fallback)
            return
        try:
            if error is not None:
                raise StoreUnavailable(f"restriction store unavailable: {error}") from error
            reply = raw.result()
            # The common record straight to its rules (`common_record`, `plain_rules`): ~2 µs
            # of a miss where parsing it into `Restrictions` and compiling those took ~7.
            # Anything else is parsed, checked and compiled in full.
            common = common_record(reply)
            rules = None if common is None else plain_rules(*common)
            outcome = (rules, True) if rules is not None else self._outcome(token_hash, parse_read(reply))
        except Exception as failure:
            settle(self.failed(token_hash, shard, failure))
        else:
            shard.breaker.success()
            if self._unreadable_logged:
                self._unreadable_logged.discard(token_hash)
            settle(outcome)

    async def read(self, token_hash: str, shard: Shard) -> Outcome:
        """The general path: bounded, through the breaker, the marker check and redis-py."""
        self.reading += 1
        try:
            return await self._read(token_hash, shard)
        finally:
            self.reading -= 1
            if not self.reading and self.after_reads is not None:
                self.after_reads()

    async def _read(self, token_hash: str, shard: Shard) -> Outcome:
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
                failure = self.failed(token_hash, shard, error)
                if failure is error:
                    raise
                raise failure from error
            except BaseException as error:
                current = asyncio.current_task()
                if isinstance(error, asyncio.CancelledError) and current and not current.cancelling():
                    # Cancelled inside the store client, not by our caller: a failed read.
                    raise self.failed(token_hash, shard, error) from error
                # Cancelled: no outcome. If this was the trial, the next read may be one at once.
                shard.breaker.release()
                raise
            else:
                shard.breaker.success()
                return outcome
            finally:
                self._observe(started)

    def _observe(self, started: float) -> None:
        elapsed = time.monotonic() - started
        self.latency_sum += elapsed
        self.latency_counts[bisect.bisect_left(READ_LATENCY_BUCKETS, elapsed)] += 1

    def _outcome(self, token_hash: str, restrictions: Restrictions | None) -> Outcome:
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

    def failed(self, token_hash: str, shard: Shard, error: BaseException) -> StoreUnavailable:
        """Report a failed read to the shard's breaker; the error for the caller."""
        if isinstance(error, StoreUnmarked):
            # The store answered, so the circuit has nothing to open for: the marker check
            # alone fails checks closed, and re-reads the marker until an `init` or a restore.
            shard.breaker.success()
            return error
        self.errors += 1
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


def _fast_eligible(shard: Shard) -> bool:
    return shard.coherent and shard.sound is True and shard.breaker.state is BreakerState.CLOSED


def _settle_general(settle: Settle, source: asyncio.Future[Outcome]) -> None:
    """A general-path read is over: its outcome, its error, or None (cancelled, and so are
    the callers)."""
    if source.cancelled():
        settle(None)
    else:
        settle(source.exception() or source.result())


def _settle_fallback(settle: Settle, source: asyncio.Future[Outcome]) -> None:
    """A fast read sent down the general path is over: cancelled, it is a failed read."""
    if source.cancelled():
        settle(StoreUnavailable("restriction store read cancelled"))
    else:
        settle(source.exception() or source.result())
