"""The parts of the store that fail on their own, and what a validator knows of each.

One Redis server, or a Sentinel-managed master, is one part: the whole store. A Redis Cluster has
one part per primary, serving its slots, and every token lives in one slot (docs/behaviour.md,
"Redis Cluster"). For each part a validator tracks three things on its own:

- coherent: its invalidations arrive (the listener's subscription to the node is confirmed), so
  entries read from it may be served fresh; while not, they are read again on every check;
- sound: it carries this deployment's wiped-store marker (None: not known, read it first);
- failing: its circuit breaker.

So one primary's failure, or a wipe of it, fails closed only the uncached tokens in its slots, and a
change on a healthy primary reaches every validator in the usual milliseconds meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Mapping

from validator.breaker import BreakerState, CircuitBreaker
from validator.errors import StoreUnavailable, StoreUnmarked
from validator.store import Store
from validator.store.layout import SLOTS, slot_of

__all__ = ["Shard", "Shards"]

log = logging.getLogger("validator")

# Marker reads in a row that a marker change may overtake before a verification gives up.
_MARKER_READS = 5

# Slot ranges of one Cluster primary, inclusive; None for the whole store.
Ranges = tuple[tuple[int, int], ...] | None

_SEVERITY = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class Shard:
    """One part of the store, as a validator knows it."""

    __slots__ = ("breaker", "checked_at", "coherent", "epoch", "name", "ranges", "sound", "verifying")

    def __init__(self, name: str, ranges: Ranges, breaker: CircuitBreaker, *, sound: bool | None) -> None:
        self.name = name
        self.ranges = ranges
        self.breaker = breaker
        self.coherent = False
        # None: not known (read the marker before the next read); True: present; False: missing.
        self.sound = sound
        self.checked_at = 0.0
        # Grows whenever the marker may have changed; a verification that started before does not
        # count (see `Shards.marker_changed`).
        self.epoch = 0
        self.verifying: asyncio.Task[bool | None] | None = None

    def __repr__(self) -> str:
        return f"<Shard {self.name} coherent={self.coherent} sound={self.sound} {self.breaker.state.value}>"


class Shards:
    """The shards of one validator's store, kept up to date by the invalidation listener's events
    (`on_layout`, `on_up`, `on_down`), and the wiped-store marker check per shard."""

    def __init__(
        self,
        store: Store,
        make_breaker: Callable[[], CircuitBreaker],
        *,
        expire: Callable[[Callable[[str], bool] | None], None],
        require_marker: bool,
        marker_interval: float,
    ) -> None:
        self._store = store
        self._make_breaker = make_breaker
        self._expire = expire
        self.require_marker = require_marker
        self.marker_interval = marker_interval
        self._ending: list[asyncio.Task[bool | None]] = []  # marker reads `close` left ending
        # Until a Cluster's layout is known (and always on one server or a Sentinel master), every
        # token is in the whole store.
        self.whole = Shard("*", None, make_breaker(), sound=None if require_marker else True)
        self.by_name: dict[str, Shard] = {}
        self._by_slot: list[Shard] | None = None
        self._layout: Mapping[str, Hashable] = {}

    def all(self) -> list[Shard]:
        return [self.whole, *self.by_name.values()]

    @property
    def single(self) -> bool:
        """Whether every token is in the whole store's shard (no Cluster layout known)."""
        return self._by_slot is None

    def of(self, token_hash: str) -> Shard:
        """The shard that holds `token_hash`'s keys (their hash tag is the token hash)."""
        by_slot = self._by_slot
        if by_slot is None:
            return self.whole
        return by_slot[slot_of(token_hash)]

    def of_slot(self, slot: int) -> Shard:
        return self.whole if self._by_slot is None else self._by_slot[slot]

    def breaker_state(self) -> BreakerState:
        """The worst state of any shard's breaker (for metrics)."""
        return max((shard.breaker.state for shard in self.all()), key=_SEVERITY.__getitem__)

    # ---------------------------------------------------------------- listener events

    def on_layout(self, layout: Mapping[str, Hashable]) -> None:
        """A new topology: the shards follow it, and entries of every slot that changed hands
        are read again (the new node's changes were not listened to before)."""
        previous, self._layout = self._layout, layout
        ranges = {node: spans for node, spans in layout.items() if isinstance(spans, tuple) and spans}
        if not ranges:
            # One server or a Sentinel master: one shard. A new master (a failover) is a new node
            # whose changes were not listened to: nothing cached is fresh until it is subscribed.
            if previous and set(previous) != set(layout):
                self.whole.coherent = False
                self._expire(None)
                # The reads that failed were the old master's: try the new one at once.
                self.whole.breaker.retry_now()
            return
        old = self._by_slot
        shards = {node: self.by_name.get(node) or self._new(node, spans) for node, spans in ranges.items()}
        for node, shard in shards.items():
            shard.ranges = ranges[node]
        by_slot = [self.whole] * SLOTS
        for node, spans in ranges.items():
            for start, end in spans:
                by_slot[start : end + 1] = [shards[node]] * (end - start + 1)
        self.by_name = shards
        self._by_slot = by_slot
        if old is None:
            self._expire(None)
            return
        moved = bytearray(SLOTS)
        for slot in range(SLOTS):
            if old[slot] is not by_slot[slot]:
                moved[slot] = 1
        if any(moved):
            self._expire(lambda token_hash: moved[slot_of(token_hash)] == 1)

    def _new(self, node: str, ranges: Ranges) -> Shard:
        return Shard(node, ranges, self._make_breaker(), sound=None if self.require_marker else True)

    def on_up(self, node: str, connected: bool) -> None:
        """The node's invalidations arrive from now on: what was cached of it is read again once,
        then its entries are served fresh. `connected`: every node of the topology is up."""
        shard = self.by_name.get(node)
        if shard is None:
            if self._by_slot is not None or node not in self._layout or not connected:
                return
            shard = self.whole
        self._expire(self._in(shard))
        shard.coherent = True
        if self.require_marker:
            # The node may have come back empty (restarted without persistence).
            self.marker_changed(shard)
            self.schedule_verify(shard)

    def on_down(self, node: str) -> None:
        """The node's invalidations may be missed from now on: its entries are read again on
        every check, and its marker is read again before its next answer is trusted."""
        shard = self.by_name.get(node)
        if shard is None:
            if self._by_slot is not None or node not in self._layout:
                return  # a node that left the topology: `on_layout` took care of its slots
            shard = self.whole
        shard.coherent = False
        self._expire(self._in(shard))
        if self.require_marker:
            self.marker_changed(shard)

    def _in(self, shard: Shard) -> Callable[[str], bool] | None:
        """A test of whether a token hash is in `shard` (None: every token)."""
        if self._by_slot is None:
            return None
        by_slot = self._by_slot
        return lambda token_hash: by_slot[slot_of(token_hash)] is shard

    # ---------------------------------------------------------------- wiped-store marker

    def marker_changed(self, shard: Shard | None = None) -> None:
        """The marker of `shard` (None: of every shard) may have changed. A verification in flight
        may have read it before this change (a FLUSHALL just after it read "ok"): its answer must
        not be taken for the shard's state."""
        for each in self.all() if shard is None else [shard]:
            each.sound = None
            each.epoch += 1

    def schedule_verify(self, shard: Shard) -> asyncio.Task[bool | None]:
        # One marker read per shard at a time: a Cluster `init` writes a thousand marker keys,
        # and each invalidation must not start a read of its own (they would exhaust connections).
        if shard.verifying is None or shard.verifying.done():
            shard.verifying = asyncio.ensure_future(self._verify(shard))
            shard.verifying.add_done_callback(lambda t: t.cancelled() or t.exception())
        return shard.verifying

    async def _verify(self, shard: Shard) -> bool | None:
        """Whether `shard` carries our marker (None: it kept changing while being read)."""
        for _ in range(_MARKER_READS):
            epoch = shard.epoch
            state = await self._store.marker_state(shard.ranges)
            if epoch == shard.epoch:
                break
        else:
            return None
        shard.checked_at = time.monotonic()
        sound = state == "ok"
        if not sound and shard.sound is not False:
            what = "belongs to another secret" if state == "mismatch" else "is MISSING: wiped or not set"
            where = "restriction store" if shard.ranges is None else f"restriction store node {shard.name}"
            log.error(
                "%s marker %s (%r): treating it as unavailable, every uncached check of its tokens "
                "fails closed until `validator-admin init` or a restore",
                where,
                what,
                self._store.marker_key,
            )
        shard.sound = sound
        return sound

    async def ensure_sound(self, shard: Shard) -> None:
        """Return when `shard` is known to carry the marker; raise `StoreUnmarked` when it does not,
        `StoreUnavailable` when that cannot be found out."""
        if not self.require_marker:
            return
        # Invalidations report the marker's deletion; without them, re-read it now and then.
        if shard.sound is True and (
            shard.coherent or time.monotonic() - shard.checked_at < self.marker_interval
        ):
            return
        # Unknown or missing: ask again (one shared read), so an `init` or restore heals at once.
        sound: bool | None = None
        for _ in range(3):
            verifying = self.schedule_verify(shard)
            try:
                sound = await asyncio.shield(verifying)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if verifying.cancelled() and current is not None and not current.cancelling():
                    # The shared marker read was cancelled, not this read: fail this one as a
                    # store failure; the next read starts a new marker read.
                    raise StoreUnavailable("restriction store marker read cancelled") from None
                raise
            if sound is not None:
                break
        if sound is None:
            raise StoreUnavailable("restriction store marker kept changing while being read")
        if not sound:
            raise StoreUnmarked("restriction store has no marker (wiped or not initialised): failing closed")

    async def close(self) -> None:
        """End the marker reads under way (before the connections they use are released)."""
        tasks = [s.verifying for s in self.all() if s.verifying is not None and not s.verifying.done()]
        for shard in self.all():
            shard.verifying = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.2)
        self._ending = [task for task in tasks if not task.done()]

    def tasks(self) -> list[asyncio.Task[bool | None]]:
        """The marker reads `close` asked to end that are still running."""
        return [task for task in self._ending if not task.done()]
