"""The validator's lifecycle: what runs beside the checks, and how it starts, syncs and stops.

The invalidation listener (which empties cache entries as their records change, and tells the
shards when a node comes and goes), the denial log's writer and the eviction-policy check start
together (`Lifecycle.start`, called by the first check), and stop together within a bound
(`Lifecycle.close`, docs/behaviour.md, "Lifecycle"). `Lifecycle.sync` is the barrier that waits
for every change stored before it to reach the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable
from typing import Any

from validator.cache import Cache
from validator.denials import DenialLog
from validator.errors import StoreUnavailable
from validator.rules.decide import TokenRules
from validator.settings import Settings
from validator.shards import Shards
from validator.store import Store
from validator.store.invalidation import InvalidationListener

__all__ = ["Lifecycle"]

log = logging.getLogger("validator")

# How long `close()` waits for a background read to end after cancelling it, and for the
# connections to close.
_CLOSE_WAIT = 0.2


class Lifecycle:
    """Starts, synchronises and stops what runs beside a validator's checks."""

    def __init__(
        self,
        store: Store,
        cache: Cache[TokenRules],
        shards: Shards,
        denial_log: DenialLog | None,
        settings: Settings,
    ) -> None:
        self.store = store
        self.cache = cache
        self.shards = shards
        self.denial_log = denial_log
        self.require_marker = settings["require_marker"]
        self.listener: InvalidationListener | None = None
        if settings["invalidation"] and store.topology is not None:
            self.listener = InvalidationListener(
                store.topology,
                store.key_prefix,
                on_keys=self.on_keys,
                on_layout=shards.on_layout,
                on_up=self._on_up,
                on_down=shards.on_down,
                ping_interval=settings["ping_interval"],
                ping_timeout=settings["ping_timeout"],
                topology_interval=settings["topology_interval"],
            )
            cache.coherent_for = lambda token_hash: shards.of(token_hash).coherent
        self._barriers: dict[str, asyncio.Future[None]] = {}
        self.started = False
        self.closed = False
        self._eviction_check: asyncio.Future[None] | None = None
        self._late_close: asyncio.Future[None] | None = None  # see the end of `close`

    def start(self) -> None:
        """See `Validator.start`."""
        if self.started:
            return
        if self.closed:
            self.store.reopen()
            self.closed = False
        self.started = True
        self.store.local_listeners.append(self.cache.invalidate)
        if self.denial_log is not None:
            self.denial_log.start()
        if self.listener is not None:
            self.listener.start()
        # An evicted record is a token left unrestricted: say so at start ("eviction is a wipe").
        self._eviction_check = asyncio.ensure_future(self.store.log_eviction_risk())
        self._eviction_check.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def connect(self, wait: float | None) -> None:
        """See `Validator.connect`."""
        self.start()
        if self._eviction_check is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._eviction_check)
        if self.listener is not None and wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.listener.connected.wait(), wait)

    async def close(self) -> None:
        """See `Validator.close`."""
        self.started = False
        self.closed = True
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
            self.close_later(late)

    def close_later(self, tasks: list[asyncio.Future[Any]]) -> None:
        """Close the store again once `tasks` (and the one closing it now, if any) ended."""
        if self._late_close is not None and not self._late_close.done():
            tasks = [*tasks, self._late_close]
        self._late_close = asyncio.ensure_future(self._close_after(tasks))
        self._late_close.add_done_callback(lambda t: t.cancelled() or t.exception())

    def after_reads(self) -> None:
        """The last read under way ended (`Reads.read`): if it outlived `close()` (redis-py's
        RedisCluster follows a dead node by re-reading the slot map and reconnecting, after the
        store was closed), close the connections it opened."""
        if self.closed:
            self.close_later([])

    async def _close_after(self, tasks: list[asyncio.Future[Any]]) -> None:
        if tasks:
            await asyncio.wait(tasks)
        if self.closed:  # not started again meanwhile (a new start uses the connections)
            with contextlib.suppress(Exception):
                await self.store.close()

    # ------------------------------------------------------------------ invalidation events

    def on_keys(self, keys: list[str]) -> None:
        """The listener's news: these keys changed (restriction records, barriers, the marker)."""
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

    async def sync(self, timeout: float) -> None:
        """See `Validator.sync`."""
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
