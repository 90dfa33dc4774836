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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from validator.errors import ConfigurationError, StoreUnavailable
from validator.model import Decision, DeniedRequest, Reason, Source
from validator.rules.request import origin_of, request_host
from validator.store import Store, fingerprint

__all__ = ["DenialLog", "DeniedRequest", "RateLimiter"]  # DeniedRequest: a record of `model`

log = logging.getLogger("validator")


# The reason that means the token has no stored record: its denials go to the unknown-token log.
# (A malformed token never reaches the log: `Validator.check` refuses it before hashing it.)
_NOT_STORED = Reason.UNKNOWN_TOKEN.value

# What the request path queues: (time.time(), token hash, decision, Origin or Referer, client IP).
_Queued = tuple[float, str, Decision, str | None, str | None]


def _described(
    at: float, token_hash: str, decision: Decision, url: str | None, client_ip: str | None
) -> DeniedRequest:
    origin = ""
    if decision.source is Source.FRONT_END:
        seen = (request_host(url) if url else None) or "-"
        parts = origin_of(url) if url else None
        if parts is not None:
            origin = f"{parts[0]}://{parts[1]}" + (f":{parts[2]}" if parts[2] is not None else "")
    else:
        seen = client_ip or "-"
    return DeniedRequest(
        int(at * 1000),
        token_hash,
        decision.source.value if decision.source is not None else "-",
        seen[:256],
        decision.reason.value,
        "report" if decision.reported else "enforce",
        origin[:300],
    )


class RateLimiter:
    """A token bucket: `allow()` at most `rate` times a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigurationError("a log rate must be positive, with a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False


class DenialLog:
    """Queues denials and writes them to the store in batches, in the background."""

    def __init__(
        self,
        store: Store,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
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
        self.stream_length = stream_length
        self.unknown_length = unknown_length
        self.ttl = ttl
        self._queue: collections.deque[_Queued] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._log_limit = RateLimiter(log_rate, burst=max(1, int(log_rate * 2)))
        self.recorded = 0  # written to the store
        self.dropped = 0  # refused because the queue was full
        self.failed = 0  # lost because the store refused a batch

    def __len__(self) -> int:
        return len(self._queue)

    def record(self, token_hash: str, decision: Decision, url: str | None, client_ip: str | None) -> None:
        """Queue one denial (`url`: its Origin or Referer); never blocks, never raises.

        Only a tuple is queued here: what was seen is worked out by the writer, off the request path.
        """
        if self._log_limit.allow():
            self._log(token_hash, decision, url, client_ip)
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            return
        self._idle.clear()
        self._queue.append((time.time(), token_hash, decision, url, client_ip))
        self._wakeup.set()

    def _log(self, token_hash: str, decision: Decision, url: str | None, client_ip: str | None) -> None:
        suppressed, self._log_limit.suppressed = self._log_limit.suppressed, 0
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
            self._task = asyncio.get_running_loop().create_task(self._run(), name="validator-denial-log")

    async def stop(self, flush_timeout: float = 1.0) -> None:
        """Write what is queued (for at most `flush_timeout` seconds), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        # The writer drains the queue and returns; only past the deadline is it cancelled (a
        # cancellation in the middle of a client's command is not always honoured).
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), flush_timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, flush_timeout)

    async def flush(self) -> None:
        """Wait until every denial queued so far is written (or given up on)."""
        await self._idle.wait()

    async def _run(self) -> None:
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._write_batch()
            self._idle.set()

    async def _write_batch(self) -> None:
        count = min(len(self._queue), self.batch_size)
        batch = [_described(*self._queue.popleft()) for _ in range(count)]
        stored = [denial for denial in batch if denial.reason != _NOT_STORED]
        unknown = [denial for denial in batch if denial.reason == _NOT_STORED]
        try:
            await self.store.append_denials(
                stored,
                unknown,
                max_length=self.stream_length,
                unknown_length=self.unknown_length,
                ttl=self.ttl,
            )
        except StoreUnavailable as error:
            self.failed += len(batch)
            log.debug("denial log: %d denials not written: %s", len(batch), error)
            await asyncio.sleep(0.5)  # don't spin on a store that is down
        else:
            self.recorded += len(batch)
