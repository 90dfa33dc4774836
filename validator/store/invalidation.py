"""Server-assisted invalidation: Redis tells every validator process which keys changed.

One connection per Redis node that takes writes (the server; the Sentinel master; each Cluster
primary) turns on `CLIENT TRACKING ... BCAST PREFIX <key prefix>` with `REDIRECT` to itself and
subscribes to `__redis__:invalidate` (RESP2: redis-py's asyncio pub/sub sees the messages only
there). Redis then sends the name of every key under the prefix that any client changes on that
node, including `redis-cli` by hand, and a null payload on FLUSHALL/FLUSHDB. See
https://redis.io/docs/latest/develop/reference/client-side-caching/ ("broadcasting mode").

Whenever a connection is not known to be alive, or the set of nodes may have changed (a Sentinel
or Cluster failover, a resharding), changes may be missed, so the cache is dropped: when a
connection is lost, when a ping on it goes unanswered, when the topology differs from the one
subscribed to, and again when every node is subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from validator.errors import ConfigurationError

__all__ = ["InvalidationListener", "SingleServer", "Topology"]

log = logging.getLogger("validator")

CHANNEL = "__redis__:invalidate"
CLIENT_NAME = "validator-invalidation"


class Topology(Protocol):
    """The Redis nodes that take writes, hence the ones to subscribe to."""

    @property
    def dynamic(self) -> bool:
        """Whether the nodes may change (failover, resharding), so must be watched."""

    async def discover(self) -> Mapping[str, Hashable]:
        """The current write nodes by name, each with what identifies its role (e.g. its slots).

        Raises `RedisError` or `OSError` when it cannot be found out."""

    def subscriber(self, node: str) -> aioredis.Redis:
        """A new RESP2 client without retries for one node named by `discover`."""

    async def aclose(self) -> None:
        """Release what `discover` holds."""


class SingleServer:
    """One Redis server at a fixed address: its topology never changes."""

    dynamic = False

    def __init__(self, client_factory: Callable[[], aioredis.Redis]) -> None:
        self._factory = client_factory

    async def discover(self) -> Mapping[str, Hashable]:
        return {"server": None}

    def subscriber(self, node: str) -> aioredis.Redis:
        return self._factory()

    async def aclose(self) -> None:
        pass


class _Silent(Exception):
    """A connection stopped answering pings."""


class _TopologyChanged(Exception):
    """The write nodes are not the ones subscribed to."""


class _Subscription:
    def __init__(self, node: str, client: aioredis.Redis) -> None:
        self.node = node
        self.client = client
        self.pubsub = client.pubsub()

    def abort(self) -> None:
        """Drop the connection under a read that ignores cancellation (redis-py issue 2551:
        `get_message` can swallow a CancelledError); the read then fails and returns."""
        connection = self.pubsub.connection
        writer = getattr(connection, "_writer", None) if connection is not None else None
        if writer is not None:
            writer.transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            await self.client.aclose()


class InvalidationListener:
    """Runs in the background; calls `on_keys` with changed key names, `on_reset` when
    everything must be forgotten, and `on_connected` each time tracking is (re)established on
    every node of the topology (`connected` is set only then)."""

    def __init__(
        self,
        topology: Topology,
        prefix: str,
        *,
        on_keys: Callable[[list[str]], None],
        on_reset: Callable[[], None],
        on_connected: Callable[[], Awaitable[None]],
        ping_interval: float = 1.0,
        ping_timeout: float = 1.0,
        topology_interval: float = 2.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        if ping_interval <= 0 or ping_timeout <= 0 or topology_interval <= 0:
            raise ConfigurationError("invalidation ping and topology intervals must be positive")
        if not 0 < backoff_min <= backoff_max:
            raise ConfigurationError("invalidation backoff must be positive, its minimum below its maximum")
        self._topology = topology
        self._prefix = prefix
        self._on_keys = on_keys
        self._on_reset = on_reset
        self._on_connected = on_connected
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.topology_interval = topology_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connected = asyncio.Event()
        self.lost = asyncio.Event()  # set while the connection is down after having been up
        self.connections = 0
        self.resets = 0
        self.nodes: Mapping[str, Hashable] = {}  # the nodes subscribed to, while connected
        self._task: asyncio.Task[None] | None = None
        self._subscriptions: list[_Subscription] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="validator-invalidation")

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop listening; never waits more than about twice `timeout`."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            # A read swallowed the cancellation: cut its connection so that it returns.
            for subscription in self._subscriptions:
                subscription.abort()
            done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.warning("invalidation listener did not stop within %.0f s; leaving it", 2 * timeout)

    def _reset(self) -> None:
        self.resets += 1
        self._on_reset()

    async def _run(self) -> None:
        delay = self.backoff_min
        while True:
            subscriptions: list[_Subscription] = []
            self._subscriptions = subscriptions
            try:
                nodes = await asyncio.wait_for(self._topology.discover(), self.ping_timeout)
                for node in nodes:
                    subscriptions.append(_Subscription(node, self._topology.subscriber(node)))
                    await asyncio.wait_for(self._subscribe(subscriptions[-1].pubsub), self.ping_timeout)
                # Anything may have changed while nobody was listening.
                self._reset()
                self.connections += 1
                self.nodes = nodes
                self.lost.clear()
                self.connected.set()
                delay = self.backoff_min
                log.info("invalidation: tracking keys under %r on %d node(s)", self._prefix, len(nodes))
                await self._on_connected()
                await self._watch(subscriptions, nodes)
            except (RedisError, OSError, TimeoutError, _Silent, _TopologyChanged) as error:
                log.warning(
                    "invalidation connection lost (%s); cache dropped, reconnecting",
                    error or type(error).__name__,
                )
            finally:
                self.nodes = {}
                if self.connected.is_set():
                    self.connected.clear()
                    self.lost.set()
                    self._reset()
                for subscription in subscriptions:
                    await subscription.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _watch(self, subscriptions: list[_Subscription], nodes: Mapping[str, Hashable]) -> None:
        """Listen on every subscription until one fails or the topology changes (both raise)."""
        watchers = [asyncio.ensure_future(self._listen(s.pubsub)) for s in subscriptions]
        if self._topology.dynamic:
            watchers.append(asyncio.ensure_future(self._follow(nodes)))
        try:
            done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            for watcher in done:
                watcher.result()
        finally:
            for watcher in watchers:
                watcher.cancel()
            _, pending = await asyncio.wait(watchers, timeout=self.ping_timeout)
            if pending:
                # A read swallowed the cancellation: cut the connections under it.
                for subscription in subscriptions:
                    subscription.abort()
                await asyncio.wait(pending, timeout=self.ping_timeout)
            for watcher in watchers:
                if watcher.done() and not watcher.cancelled():
                    watcher.exception()  # retrieved: the first failure is the one raised above

    async def _follow(self, subscribed: Mapping[str, Hashable]) -> None:
        # A failover that kills a node also kills our connection to it; one that demotes a live
        # node (or a resharding) does not, and is seen here within `topology_interval`.
        while True:
            await asyncio.sleep(self.topology_interval)
            current = await asyncio.wait_for(self._topology.discover(), self.ping_timeout)
            if current != subscribed:
                raise _TopologyChanged("the Redis topology changed (failover or resharding)")

    async def _subscribe(self, pubsub: PubSub) -> None:
        # Named, so that operators can find it in CLIENT LIST (and tests can CLIENT KILL it).
        await pubsub.execute_command("CLIENT", "SETNAME", CLIENT_NAME)
        await pubsub.parse_response(block=True)
        await pubsub.execute_command("CLIENT", "ID")
        client_id = await pubsub.parse_response(block=True)
        await pubsub.execute_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", self._prefix
        )
        await pubsub.parse_response(block=True)
        await pubsub.subscribe(CHANNEL)
        while True:
            message = await pubsub.get_message(timeout=self.ping_timeout)
            if message is None:
                raise _Silent("no subscribe confirmation")
            if message["type"] == "subscribe":
                return

    async def _listen(self, pubsub: PubSub) -> None:
        ping_sent: float | None = None
        while True:
            if ping_sent is None:
                wait = self.ping_interval
            else:
                wait = ping_sent + self.ping_timeout - time.monotonic()
                if wait <= 0:
                    raise _Silent(f"no answer to a ping within {self.ping_timeout}s")
            message = await pubsub.get_message(timeout=wait)
            if message is None:
                if ping_sent is None:
                    await pubsub.ping()
                    ping_sent = time.monotonic()
            elif message["type"] == "pong":
                ping_sent = None
            elif message["type"] == "message":
                keys = message["data"]
                if keys is None:
                    log.warning("invalidation: the store was flushed; cache dropped")
                    self._reset()
                else:
                    self._on_keys(keys)
