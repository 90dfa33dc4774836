"""Server-assisted invalidation: Redis tells every validator process which keys changed.

One connection per Redis node that takes writes (the server; the Sentinel master; each Cluster
primary) turns on `CLIENT TRACKING ... BCAST PREFIX <key prefix>` with `REDIRECT` to itself and
subscribes to `__redis__:invalidate` (RESP2: redis-py's asyncio pub/sub sees the messages only
there). Redis then sends the name of every key under the prefix that any client changes on that
node, including `redis-cli` by hand, and a null payload on FLUSHALL/FLUSHDB. See
https://redis.io/docs/latest/develop/reference/client-side-caching/ ("broadcasting mode").

Each node is subscribed on its own: while a node's connection is not known to be alive, changes
on that node may be missed, so the validator treats that node's slots as not coherent (see
`validator.shards`): when its connection is lost, when a ping on it goes unanswered, when it
leaves the topology, and again when it is subscribed. The other nodes' invalidations keep flowing
(one Cluster primary down affects only its own slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from validator.errors import ConfigurationError
from validator.store.tasks import end_if_cancelled

__all__ = ["InvalidationListener", "SingleServer", "Topology"]

log = logging.getLogger("validator")

CHANNEL = "__redis__:invalidate"
# How long stopping a node's subscription waits for its task before cutting its connection, and
# again after (`_stop_nodes`).
_STOP_WAIT = 0.1
CLIENT_NAME = "validator-invalidation"
# Seconds between two looks at a Sentinel or Cluster topology while one of its nodes is down (a
# failover may be under way). Each look is one CLUSTER SLOTS and one CLUSTER NODES (or one
# SENTINEL MASTERS per sentinel) on a node that answers: ten a second per process, only during
# an outage; a promotion is then followed within about this.
FAILOVER_POLL = 0.1


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

    hint: Callable[[], None]
    """Called by the store when a read found the topology changed (the listener sets it)."""

    async def aclose(self) -> None:
        """Release what `discover` holds."""


class SingleServer:
    """One Redis server at a fixed address: its topology never changes."""

    dynamic = False

    def __init__(self, client_factory: Callable[[], aioredis.Redis]) -> None:
        self._factory = client_factory
        self.hint: Callable[[], None] = lambda: None

    async def discover(self) -> Mapping[str, Hashable]:
        return {"server": None}

    def subscriber(self, node: str) -> aioredis.Redis:
        return self._factory()

    async def aclose(self) -> None:
        pass


class _Silent(Exception):
    """A connection stopped answering pings."""


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
            await self.pubsub.aclose()
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            await self.client.aclose()


class InvalidationListener:
    """Runs in the background: one subscription per write node, each with its own reconnects,
    so that one node's failure leaves the others' invalidations flowing.

    Calls `on_keys` with changed key names; `on_layout` with each new topology (before the
    subscriptions follow it); `on_up(node)` each time tracking is established on a node;
    `on_down(node)` when a node's invalidations may be missed from now on (its connection was
    lost, it left the topology, or it was flushed: then `on_up` follows at once). `connected`
    is set while every node of the topology is subscribed.
    """

    def __init__(
        self,
        topology: Topology,
        prefix: str,
        *,
        on_keys: Callable[[list[str]], None],
        on_layout: Callable[[Mapping[str, Hashable]], None],
        on_up: Callable[[str], None],
        on_down: Callable[[str], None],
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
        self._on_layout = on_layout
        self._on_up = on_up
        self._on_down = on_down
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.topology_interval = topology_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connected = asyncio.Event()
        self.lost = asyncio.Event()  # set while a node is down after having been up
        self.connections = 0  # subscriptions established, over all nodes
        self.resets = 0  # times a node's invalidations may have been missed
        self.layout: Mapping[str, Hashable] = {}  # the topology last discovered
        self.up: set[str] = set()  # the nodes subscribed to now
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # set by `stop`: no node is subscribed any more, no loop goes on
        self._nodes: dict[str, asyncio.Task[None]] = {}
        # Every node task not ended yet, those `_nodes` no longer holds (being stopped) included:
        # what `stop` must see end.
        self._running: set[asyncio.Task[None]] = set()
        self._subscriptions: dict[str, _Subscription] = {}
        self._poke = asyncio.Event()
        topology.hint = self.poke

    @property
    def nodes(self) -> Mapping[str, Hashable]:
        """The topology, while every node of it is subscribed (else empty)."""
        return self.layout if self.connected.is_set() else {}

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="validator-invalidation")

    def poke(self) -> None:
        """Look at the topology now (a read was redirected, a node was lost), not at the next poll."""
        self._poke.set()

    async def stop(self, timeout: float = 0.2) -> None:
        """Stop listening; never waits more than about twice `timeout`, whatever Redis does
        (docs/behaviour.md, "Lifecycle"). Every task the listener started is asked to end, not
        only the main one: a main task that ignored its cancellation (or whose own stopping of
        the nodes was cut short) must not leave a node's task, and its connection, running."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._poke.set()  # a loop that swallowed its cancellation wakes up, and sees `_stopping`
        task.cancel()
        await asyncio.wait({task}, timeout=timeout)
        pending = {t for t in (task, *self._running) if not t.done()}
        if pending:
            # A read or a connect ignored the cancellation (redis-py issue 2551), or the main
            # task's own stopping of the nodes is still under way: cut every connection under
            # them, and ask every one of them again.
            self._abort_all()
            for running in pending:
                running.cancel()
            _, pending = await asyncio.wait(pending, timeout=timeout)
        if pending:
            log.warning("invalidation listener did not stop within %.1f s; leaving it", 2 * timeout)

    def tasks(self) -> set[asyncio.Task[None]]:
        """The listener's tasks still running (none once `stop` returned, barring a hang)."""
        running = {t for t in self._running if not t.done()}
        if self._task is not None and not self._task.done():
            running.add(self._task)
        return running

    async def _run(self) -> None:
        delay = self.backoff_min
        try:
            while not self._stopping:
                end_if_cancelled()
                self._poke.clear()
                try:
                    layout = await asyncio.wait_for(self._topology.discover(), self.ping_timeout)
                except (RedisError, OSError, TimeoutError) as error:
                    (log.warning if delay == self.backoff_min else log.debug)(
                        "invalidation: Redis topology not found (%s); retrying", error or "timeout"
                    )
                    # A poke (a sentinel announcing the new master) ends the wait.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._poke.wait(), delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff_min
                if layout != self.layout or not self._nodes:
                    await self._follow(layout)
                if not self._topology.dynamic:
                    await asyncio.gather(*self._nodes.values())
                    continue
                # While a node is down a failover may be under way: look every FAILOVER_POLL s, so
                # that the promoted replica's slots are subscribed (and served) within that of its
                # promotion (Sentinel: its +switch-master event pokes at once).
                interval = self.topology_interval if self.connected.is_set() else FAILOVER_POLL
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), min(interval, self.topology_interval))
        finally:
            await self._stop_nodes(list(self._nodes))

    async def _follow(self, layout: Mapping[str, Hashable]) -> None:
        """Take a new topology: tell the validator, then subscribe to new nodes and drop gone ones."""
        if self.layout:
            log.info("invalidation: the Redis topology changed (failover or resharding)")
        self.layout = layout
        self._on_layout(layout)
        # Stopped tasks report their node down themselves (see `_node`).
        await self._stop_nodes([node for node in self._nodes if node not in layout])
        for node in layout:
            # Never a new task once `stop` began (it would outlive the close).
            if node not in self._nodes and not self._stopping:
                task = self._nodes[node] = asyncio.ensure_future(self._node(node))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        self._update_connected()

    async def _stop_nodes(self, nodes: list[str]) -> None:
        tasks = [self._nodes.pop(node) for node in nodes if node in self._nodes]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=_STOP_WAIT)
        if pending:
            # A read swallowed the cancellation (redis-py issue 2551): cut its connection.
            for node in nodes:
                subscription = self._subscriptions.get(node)
                if subscription is not None:
                    subscription.abort()
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_STOP_WAIT)

    def _abort_all(self) -> None:
        for subscription in list(self._subscriptions.values()):
            subscription.abort()
        for task in self._running:
            task.cancel()

    def _update_connected(self) -> None:
        if self.layout and all(node in self.up for node in self.layout):
            self.lost.clear()
            self.connected.set()
        elif self.connected.is_set():
            self.connected.clear()
            self.lost.set()

    async def _node(self, node: str) -> None:
        """Keep `node` subscribed until cancelled, reconnecting with backoff."""
        delay = self.backoff_min
        while not self._stopping:
            end_if_cancelled()
            subscription = _Subscription(node, self._topology.subscriber(node))
            self._subscriptions[node] = subscription
            try:
                await asyncio.wait_for(self._subscribe(subscription.pubsub), self.ping_timeout)
                self.connections += 1
                self.up.add(node)
                self._update_connected()
                # Anything may have changed on this node while nobody was listening.
                self._on_up(node)
                delay = self.backoff_min
                log.info("invalidation: tracking keys under %r on %s", self._prefix, node)
                await self._listen(subscription.pubsub, node)
            except (RedisError, OSError, TimeoutError, _Silent) as error:
                # Said once per outage; the reconnection attempts that follow are debug lines.
                (log.warning if delay == self.backoff_min else log.debug)(
                    "invalidation connection to %s lost (%s); reconnecting. Entries of its tokens will "
                    "be re-read; cached decisions still serve while Redis is unreachable",
                    node,
                    error or type(error).__name__,
                )
            finally:
                if node in self.up:
                    self.up.discard(node)
                    self.resets += 1
                    self._update_connected()
                    self._on_down(node)
                if self._subscriptions.get(node) is subscription:
                    del self._subscriptions[node]
                # Cut first: closing politely waits for a server that may be frozen. Shielded:
                # a second cancellation (`stop` asks twice) must not leave the client half closed.
                subscription.abort()
                await asyncio.shield(subscription.close())
            # A cancellation swallowed on the way ends the task here, not after a backoff.
            end_if_cancelled()
            if self._stopping:
                return
            # The node may be gone for good (a failover): look at the topology now.
            self.poke()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

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

    async def _listen(self, pubsub: PubSub, node: str) -> None:
        ping_sent: float | None = None
        while True:
            end_if_cancelled()
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
                    log.warning("invalidation: %s was flushed; entries of its tokens will be re-read", node)
                    self.resets += 1
                    self._on_down(node)
                    self._on_up(node)
                else:
                    self._on_keys(keys)
