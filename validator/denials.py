"""The denial log: each denial (or would-be denial in report-only mode) recorded in Redis, off
the request path, and logged at a bounded rate.

A stored token's denials go to a capped stream of its own. Denials of tokens without a stored
record (unknown tokens) go to one shared, capped unknown-token log under the token's
fingerprint: anyone can invent tokens, so they must not get a key each (docs/behaviour.md, "Unknown tokens
cannot grow the store"). Every stream expires `ttl` seconds after its last write. In all, Redis
holds about (stored tokens denied within `ttl`) x `stream_length` + `unknown_length` entries, each
under 1 KB (what was seen and the origin are truncated); trimming is approximate, so each stream
may exceed its cap by one stream node (at most 100 entries or 4 KB with Redis's defaults).

Recording is a deque append; a background task writes batches in one pipelined round trip.
When the queue is full (a flood of denied requests, or Redis down), new denials are dropped
and counted rather than held: the log is for people, and must never slow the requests down.

Under a flood (a batch of FLOOD_BATCH denials or more) repeats are merged: the denials of the
batch that are the same request (same token, decision, Origin or Referer, client address) become
one stream entry with `count` (how many) and `first` (the time of the first; `at` is the
last's). A flood of one token then costs one entry per batch, not one per request, and pushes no
other denial of that token out of its capped stream. Outside floods, and for a denial that is
not repeated, entries are stored exactly as before (no `count`, no `first`). Benchmarks: `denials` (the
writer's CPU per denial under a flood, ~22 us before this; see `Store.append_denials`).

Each stored token's denials are also summed in a bounded summary beside its stream (per client
address and value, at most `SUMMARY_PAIRS` pairs, fair per client: `validator.store.denial_streams`,
`summary.lua`), one script call per token and batch, so that a flood of distinct values from one
client cannot push the others out of what `validator-admin suggest` learns from (the stream
keeps only its last ~1,000 entries). The client address goes with each description for it.

Each entry also holds the `tag` of its request (`validator.store.denial_refs.request_tag`), and
`record` returns what it took of the denial (`Taken`), which the check hands its caller with the
decision (`Denied`), so that a 403 can carry an `Access-Denied-Ref` (`ref`) that leads
`validator-admin denials --ref` to the entry: every denial of a merged group shares its request's
tag, and its time lies in the entry's `first`..`at`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from validator.errors import ConfigurationError, StoreUnavailable
from validator.model import Decision, DeniedRequest, Entry, Reason, Source
from validator.rules.request import MAX_URL_LENGTH, request_host, scheme_and_port
from validator.store import Store, fingerprint
from validator.store.denial_refs import DROPPED, LOGGED, request_tag
from validator.store.denial_streams import DenialEntry, Description, unknown_shard, unknown_shard_length
from validator.store.tasks import end_if_cancelled

__all__ = [
    "DenialLog",
    "Denied",
    "DeniedRequest",
    "RateLimiter",
    "Taken",
]  # DeniedRequest: a record of `model`

log = logging.getLogger("validator")


# The reason that means the token has no stored record: its denials go to the unknown-token log.
# (A malformed token never reaches the log: `Validator.check` refuses it before hashing it.)
_NOT_STORED = Reason.UNKNOWN_TOKEN.value
_UNKNOWN = Reason.UNKNOWN_TOKEN

# What the request path queues: (time.monotonic(), token hash or cache entry, decision, Origin or
# Referer, client IP). One clock read serves the log-line rate limit and the record; the writer turns it
# into wall-clock time (`_wall_offset`), so a record's time is off only by a wall-clock step
# between the request and its write (milliseconds later).
_Queued = tuple[float, str | Entry, Decision, str | None, str | None]

# What the log took of one denial (`DenialLog.record`): what was queued, or the token (its hash,
# or its cache entry) of one dropped for a full queue.
Taken = _Queued | str | Entry

# A decision the denial log took (a denial, or a report-only one let through) and what the log
# took of it: what `Validator.screen` returns for it, so that the reply can carry its reference
# (`DenialLog.ref`) without reading anything shared after the check. A plain pair, told from a
# `Decision` by `isinstance(x, tuple)`: a NamedTuple cost 6-10x as much to build (timeit, CPython
# 3.11, a loaded 2-vCPU machine: 0.5-1.2 us against 0.05-0.12 us), which every denied check (~2-5 us,
# benchmarks: hotpath) would pay.
Denied = tuple[Decision, Taken]


def _origin(url: str, host: str) -> str:
    """`scheme://host:port` of an Origin or Referer value whose host (`request_host`) is `host`,
    with the effective port (the scheme's default when none is given), or "" when its port is not
    a port number: what `origin_of` gives, from the remembered host instead of a second parse of
    the value (2.4 us of `host_of` per denial otherwise)."""
    found = scheme_and_port(url)
    if found is None:
        return ""
    scheme, port = found
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


# What the queue holds in place of an Origin or Referer longer than MAX_URL_LENGTH: one shared
# value as long, which has no host either (`host_of`), so the record is the same (P-PARSE-CACHE-BOUNDED:
# a flood of large headers must not be held by the queue, up to `queue_size` of them).
_NO_HOST = "-" * (MAX_URL_LENGTH + 1)
# How much of the client address a record keeps (`_description`).
_SEEN_LENGTH = 256


def _description(
    decision: Decision, url: str | None, client_ip: str | None
) -> tuple[str, str, str, str, str]:
    origin = ""
    if decision.source is Source.FRONT_END:
        host = request_host(url) if url else None
        seen = host or "-"
        if host is not None and url is not None:
            origin = _origin(url, host)
    else:
        seen = client_ip or "-"
    return (
        decision.source.value if decision.source is not None else "-",
        seen[:_SEEN_LENGTH],
        decision.reason.value,
        "report" if decision.reported else "enforce",
        origin[:300],
    )


def _described(
    at: float, token_hash: str, decision: Decision, url: str | None, client_ip: str | None
) -> DeniedRequest:
    return DeniedRequest(int(at * 1000), token_hash, *_description(decision, url, client_ip))


# The shards of the unknown-token log (`Store.unknown_denials_key`).
_SHARDS = len(Store.UNKNOWN_SHARD_TAGS)

# A batch this large means a flood: the writer then lets the next one gather for up to
# FLOOD_WAIT seconds (`DenialLog._run`). Below it, each denial is written at once.
FLOOD_BATCH = 200
FLOOD_WAIT = 0.05


def _wall_offset() -> float:
    """What to add to a `time.monotonic()` reading to get the wall-clock time (`time.time()`)."""
    return time.time() - time.monotonic()


class RateLimiter:
    """A token bucket: `allow()` at most `rate` times a second on average, `burst` at once.

    Kept as the equivalent virtual-scheduling form (GCRA): one allowed at `now` when `now >=
    allowed_from`, so a caller in a hurry (`DenialLog.record`, once per denial) tests one float
    against its own clock reading, without a call (and counts what it suppresses its own way).
    """

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigurationError("a log rate must be positive, with a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._interval = 1.0 / rate
        # A millionth of an interval of slack: float rounding must not cost a full burst one.
        self._tolerance = (burst - 1 + 1e-6) * self._interval
        self.allowed_from = time.monotonic() - self._tolerance  # a full bucket
        self.suppressed = 0

    def allow(self, now: float | None = None) -> bool:
        """Whether one more is allowed at `now` (`time.monotonic()`, read here if not given)."""
        if now is None:
            now = time.monotonic()
        if now >= self.allowed_from:
            self.take(now)
            return True
        self.suppressed += 1
        return False

    def take(self, now: float) -> None:
        """Spend one (the caller saw `now >= allowed_from`)."""
        # The bucket never holds more than `burst`: time idle beyond that is not saved up.
        self.allowed_from = max(self.allowed_from, now - self._tolerance) + self._interval


class DenialLog:
    """Queues denials and writes them to the store in batches, in the background."""

    def __init__(
        self,
        store: Store,
        *,
        queue_size: int = 10_000,
        batch_size: int = 5000,
        stream_length: int = 1000,
        unknown_length: int = 1000,
        ttl: float = 7 * 24 * 3600.0,
        log_rate: float = 10.0,
    ) -> None:
        if min(queue_size, batch_size, stream_length, unknown_length) < 1:
            raise ConfigurationError("denial queue, batch, stream and unknown-log sizes must be at least 1")
        if not ttl >= 0.001:
            raise ConfigurationError(f"denial_ttl must be positive (seconds), not {ttl!r}")
        self.store = store
        self.queue_size = queue_size
        self.batch_size = batch_size
        # Under a flood the writer lets denials gather (`_run`) until the queue is half full.
        self._gathered = max(1, min(batch_size, queue_size // 2))
        self.stream_length = stream_length
        self.unknown_length = unknown_length
        self.ttl = ttl
        self._queue: collections.deque[_Queued] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None  # a writer `stop` left to end on its own
        self._closing = False
        self._stopping = asyncio.Event()  # set by `stop()`: ends the writer's backoff
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._log_limit = RateLimiter(log_rate, burst=max(1, int(log_rate * 2)))
        # Whether a log line may be due (`record`: a dropped denial reads the clock only then),
        # the timer that sets it again (`_due_later`); denials taken by the writer so far, and
        # denials recorded (`_log`) as of the last log line.
        self._line_due = True
        self._due_timer: asyncio.TimerHandle | None = None
        # True while `record` would only count a denial as dropped (the queue is full and no log
        # line is due): the request path then counts it itself (`dropped += 1`), without the
        # call. Set by `record` on such a drop; cleared when the writer takes from the queue or a
        # line is due again. At 100,000 cached tokens the call cost ~140-180 ns of a ~1.6 us
        # denied check (A/B in one process), all the rest of what a dropped denial costs.
        self.dropping = False
        self._taken = 0
        self._denials_logged = 0
        self.recorded = 0  # written to the store (merged repeats included: each counts)
        self.dropped = 0  # refused because the queue was full
        self.failed = 0  # lost because the store refused a batch

    def __len__(self) -> int:
        return len(self._queue)

    def record(self, token: str | Entry, decision: Decision, url: str | None, client_ip: str | None) -> Taken:
        """Queue one denial (`token`: the token's hash, or its cache entry; `url`: its Origin or
        Referer); never blocks, never raises. Returns what was taken of it, for its reference
        (`ref`): what was queued, or `token` when the queue was full.

        Only a tuple is queued here: what was seen is worked out by the writer, off the request
        path. A cache entry is queued as it is, and its `token_hash` read by the writer: the hash
        is another object in memory, and fetching it cost a cache miss per denial at 100,000 cached
        tokens (an entry's hash is set once, when it is cached, and never changes).
        """
        queue = self._queue
        queued = len(queue)
        if queued >= self.queue_size:
            # Full (a flood outrunning the writer): counted, and the clock is read only when a
            # log line may be due (`_line_due`), so that a dropped denial costs a counter and a
            # flag. At 100,000 cached tokens in random order a dropped denial cost ~420-510 ns
            # of `record` with the clock read, the rate limit counted and the hash fetched, and
            # costs ~100-150 ns so; a queued one ~450 ns, now ~300 ns (A/B in one process).
            self.dropped += 1
            if self._line_due:
                self._log_dropped(token, decision, url, client_ip)
            else:
                self.dropping = True  # the next ones are only counted, by the caller
            return token
        # One clock read for the rate limit and the record; the limit is one float compared
        # when the line is not due (a flood: nearly every denial), and nothing is counted: how
        # many were not logged is worked out when a line is (`_log`).
        now = time.monotonic()
        if now >= self._log_limit.allowed_from:
            self._log(now, token, decision, url, client_ip, dropped=False)
        if not queued:
            # A queue that holds something has had both done already, by the append that made it
            # non-empty (the writer clears `_wakeup` before it takes what is queued, and sets
            # `_idle` only once the queue is empty): each flood then pays them once.
            self._idle.clear()
            self._wakeup.set()
        elif queued == self._gathered:
            self._wakeup.set()  # a writer letting a flood gather (`_run`) waits no longer
        if url is not None and len(url) > MAX_URL_LENGTH:
            url = _NO_HOST  # described alike, without holding what a client sent (megabytes?)
        if client_ip is not None and len(client_ip) > _SEEN_LENGTH:
            client_ip = client_ip[:_SEEN_LENGTH]  # as much as the record keeps of it
        denial = (now, token, decision, url, client_ip)
        queue.append(denial)
        return denial

    def ref(self, denied: Denied) -> bytes:
        """The `Access-Denied-Ref` of a denial this log took (as `Validator.screen` returned
        it): its time, its token, its request's tag, and whether it was queued or dropped.

        Costs ~5 us on a busy 2-vCPU machine (the cipher, `DenialRefs.encode`), on 403 replies
        only: nothing is computed while recording."""
        decision, taken = denied
        unknown = decision.reason is _UNKNOWN
        refs = self.store.denial_refs
        if isinstance(taken, tuple):
            at, token, recorded, url, client_ip = taken
            token_hash = token if isinstance(token, str) else token.token_hash
            at_ms = int((at + _wall_offset()) * 1000)  # as the writer makes the entry's `at`
            tag = request_tag((id(recorded), url, client_ip))
            return refs.encode(LOGGED, unknown, at_ms, token_hash, tag)
        dropped = taken.token_hash if isinstance(taken, Entry) else taken
        return refs.encode(DROPPED, unknown, int(time.time() * 1000), dropped, 0)

    def _log_dropped(
        self, token: str | Entry, decision: Decision, url: str | None, client_ip: str | None
    ) -> None:
        """The log line of a dropped denial, if one is due (`record` counted the drop)."""
        now = time.monotonic()
        if now >= self._log_limit.allowed_from:
            self._log(now, token, decision, url, client_ip, dropped=True)
        else:
            self._due_later(now)

    def _due_later(self, now: float) -> None:
        """No line is due before the rate limit's next one: until then, dropped denials need
        not read the clock. A timer on the running loop says when a line is due again; without a
        running loop (a synchronous caller), `_line_due` is left set and each drop reads the clock.
        A loop held by a flood of synchronous checks fires the timer only when it runs again:
        lines are then late, never more frequent, and the next one counts every drop since."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._line_due = True
            self.dropping = False
            return
        if self._due_timer is not None:
            # Re-armed (a queued denial's line came first): one timer at a time, on this loop.
            self._due_timer.cancel()
        self._line_due = False
        self._due_timer = loop.call_later(max(0.0, self._log_limit.allowed_from - now), self._due)

    def _due(self) -> None:
        self._line_due = True
        self.dropping = False
        self._due_timer = None

    def _log(
        self,
        now: float,
        token: str | Entry,
        decision: Decision,
        url: str | None,
        client_ip: str | None,
        *,
        dropped: bool,
    ) -> None:
        """Log one denial (its line is due at `now`); `dropped`: `record` dropped it."""
        limit = self._log_limit
        limit.take(now)
        if now < limit.allowed_from:
            self._due_later(now)  # the burst is spent
        else:
            self._line_due = True  # (a queued denial's line may come before the timer)
            self.dropping = False
        # Denials not logged since the last line, from the count of every denial so far (this
        # one included): dropped, taken by the writer, queued (this one not yet, unless dropped).
        denials = self.dropped + self._taken + len(self._queue) + (not dropped)
        suppressed = denials - 1 - self._denials_logged
        self._denials_logged = denials
        token_hash = token if isinstance(token, str) else token.token_hash
        denial = _described(0.0, token_hash, decision, url, client_ip)
        log.warning(
            "%s: token %s, %s request from %s, rule %s%s",
            "would deny (report-only)" if decision.reported else "denied",
            fingerprint(token_hash),
            denial.source,
            denial.seen,
            denial.reason,
            f" ({suppressed} more not logged)" if suppressed else "",
            extra={
                "token": fingerprint(token_hash),
                "source": denial.source,
                "seen": denial.seen,
                "reason": denial.reason,
                "mode": denial.mode,
            },
        )

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="validator-denial-log")

    async def stop(self, flush_timeout: float = 0.3, cancel_timeout: float = 0.1) -> None:
        """Write what is queued (for at most `flush_timeout` seconds), then stop: returns within
        about `flush_timeout + cancel_timeout` seconds whatever the store does (docs/behaviour.md,
        "Lifecycle"). What is still queued then is lost (counted in `failed`)."""
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
            self._line_due = True
            self.dropping = False
        task, self._task = self._task, None
        if task is None:
            return
        # The writer drains the queue and returns (a failed write while closing gives up on the
        # rest: no backoff); only past the deadline is it cancelled. A cancellation in the middle
        # of a client's command is not always honoured: the writer is then left to end on its own
        # (its command times out, and it sees it was cancelled), never waited for past the bound.
        self._closing = True
        self._stopping.set()
        self._wakeup.set()
        done, _ = await asyncio.wait({task}, timeout=flush_timeout)
        if not done:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=cancel_timeout)
            if not done:
                self._ending = task
                log.debug(
                    "denial log writer did not stop within %.1f s; leaving it", flush_timeout + cancel_timeout
                )
        if done and not task.cancelled() and task.exception() is not None:
            log.warning("denial log writer failed", exc_info=task.exception())

    def tasks(self) -> list[asyncio.Task[None]]:
        """The writer, if `stop` left it still ending."""
        return [self._ending] if self._ending is not None and not self._ending.done() else []

    async def flush(self) -> None:
        """Wait until every denial queued so far is written (or given up on)."""
        await self._idle.wait()

    async def _run(self) -> None:
        flood = False
        while not self._closing:
            end_if_cancelled()
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                end_if_cancelled()
                if flood and len(self._queue) < self._gathered and not self._closing:
                    # A flood (the last batch was large): let it gather for up to FLOOD_WAIT,
                    # or until the queue is half full, so that one batch holds many repeats to
                    # merge and many entries a capped stream would push out at once (not
                    # written: `Store.append_denials`). At 100,000 denials a second this took
                    # the writer from ~5.6 to ~2.4 us of CPU per denial (benchmarks: `denials`).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), FLOOD_WAIT)
                    self._wakeup.clear()
                flood = await self._write_batch() >= FLOOD_BATCH
            self._idle.set()

    def _take_batch(self) -> tuple[list[DenialEntry], list[DenialEntry], int]:
        """Up to `batch_size` queued denials: the stored tokens' entries, the unknown tokens'
        entries, and how many denials they hold. A batch of a flood (FLOOD_BATCH or more) has
        its repeats merged; a smaller one has an entry per denial, as they came."""
        queue = self._queue
        count = min(len(queue), self.batch_size)
        if count == len(queue):  # a flood's batch takes all that gathered: one copy, not pops
            batch = list(queue)
            queue.clear()
        else:
            popleft = queue.popleft
            batch = [popleft() for _ in range(count)]
        self._taken += count
        self.dropping = False  # the queue has room again
        groups: Iterable[list[Any]]  # [first, last, count, the queued denial]
        if count < FLOOD_BATCH:
            groups = [[queued[0], queued[0], 1, queued] for queued in batch]
        else:
            groups = self._merged(batch)
        offset = _wall_offset()
        # One description per distinct request of the batch (a flood of many tokens comes from
        # few Origins and addresses), bounded by the batch; with the request's tag, which its
        # denials' references carry (`ref`: the same tuple, so the same hash in this process).
        described: dict[tuple[int, str | None, str | None], Description] = {}
        stored: list[DenialEntry] = []
        unknown: list[DenialEntry] = []
        known = described.get
        for first, last, n, queued in groups:
            _, token, decision, url, client_ip = queued
            token_hash = token if isinstance(token, str) else token.token_hash  # see `record`
            how = (id(decision), url, client_ip)
            description = known(how)
            if description is None:
                description = described[how] = (
                    *_description(decision, url, client_ip),
                    f"{request_tag(how):04x}",
                    client_ip[:64] if client_ip else "-",  # for the token's summary only
                )
            # Times stay floats here: most entries of a flood of invented tokens are never
            # written (`Store.append_denials`), so the store makes milliseconds of those it writes.
            entry: DenialEntry = (token_hash, last + offset, n, first + offset, description)
            (unknown if description[2] == _NOT_STORED else stored).append(entry)
        return stored, unknown, count

    def _merged(self, batch: list[_Queued]) -> list[list[Any]]:
        """A flood's batch with its repeats merged: one group per distinct request, in the order
        of their last denial, as they would have been written one by one (a stream's newest entry
        is the most recent request: `check --replay` takes it).

        Newest first, so that an unknown token's group is made at its last denial, and only while
        its shard of the unknown-token log has room: `Store.append_denials` writes no more than
        the newest `unknown_shard_length` entries of a shard per batch (the older would be trimmed
        by the same batch), so the others need no group, no description, no entry. In a flood of
        invented tokens (batches of ~5,000, ~1,000 written) that is ~4/5 of them: an older denial
        of a token already grouped still counts in its group (`count`, `first`)."""
        # Same request, same entry: (token hash, decision, url, client IP) -> its group.
        # Decisions are shared constants: their id is their identity (and cheaper to hash
        # than the Struct).
        merged: dict[tuple[str, int, str | None, str | None], list[Any]] = {}
        find = merged.get
        shard_length = unknown_shard_length(self.unknown_length)
        left = [shard_length] * _SHARDS  # room left per shard of the unknown-token log
        open_shards = _SHARDS
        unknown = _UNKNOWN
        shard_of = unknown_shard
        for queued in reversed(batch):
            at, token, decision, url, client_ip = queued
            token_hash = token if isinstance(token, str) else token.token_hash
            key = (token_hash, id(decision), url, client_ip)
            group = find(key)
            if group is not None:
                group[0] = at  # an older denial of the same request: the group's first
                group[2] += 1
                continue
            if decision.reason is unknown:
                if not open_shards:
                    continue  # every shard has its newest entries: this one would be trimmed
                shard = shard_of(token_hash)
                if not left[shard]:
                    continue
                left[shard] -= 1
                if not left[shard]:
                    open_shards -= 1
            merged[key] = [at, at, 1, queued]
        groups = list(merged.values())
        groups.reverse()
        return groups

    async def _write_batch(self) -> int:
        """Write one batch; returns how many denials it held."""
        stored, unknown, count = self._take_batch()
        try:
            failed = await self.store.append_denials(
                stored,
                unknown,
                max_length=self.stream_length,
                unknown_length=self.unknown_length,
                ttl=self.ttl,
            )
        except StoreUnavailable as error:
            self.failed += count
            log.debug("denial log: %d denials not written: %s", count, error)
            if self._closing:
                # Closing with the store down: what is left would fail the same way.
                self.failed += len(self._queue)
                self._queue.clear()
                return count
            # Don't spin on a store that is down (a `stop()` ends the wait).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)
        else:
            self.failed += failed
            self.recorded += count - failed
            if failed:
                log.debug("denial log: %d denials not written (the store refused them)", failed)
        return count
