"""Redis Cluster: the client, the primaries with their slots, and a hash tag for every slot.

A token's keys share one hash tag, so each token lives in one slot of one primary: a cache miss
is one round trip to one node and every admin change is one atomic script there. What must exist
on every primary (the wiped-store marker) or pass through every primary (the `sync()` barrier)
uses keys whose hash tag is chosen to map to a slot of that primary.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import functools
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from validator.store.layout import SLOTS
from validator.store.urls import MultiHostURL
from validator.store.wire import Multiplexer, WireError

__all__ = [
    "MARKER_STRIDE",
    "SLOTS",
    "ClusterTopology",
    "ClusterWires",
    "Layout",
    "cluster_client",
    "probe_slot",
    "slot_tags",
]

# The wiped-store marker is kept in every MARKER_STRIDE-th slot (1,024 keys): a resharding moves
# markers with their slots, so a primary serving any such slot stays marked without a new
# `init`, while writing them all stays cheap (~40 ms through redis-py's cluster pipeline, where
# one per slot took ~0.6 s and 50 admins initialising at once took half a minute).
MARKER_STRIDE = 16
URL_OPTIONS = {"max_connections"}

# A primary ("host:port") and the slot ranges it serves, inclusive, in order.
Layout = dict[str, tuple[tuple[int, int], ...]]


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For every slot, the smallest decimal number that maps to it when used as a hash tag.

    About 110,000 CRC16s (~0.1 s, once per process): call it off the event loop.
    """
    found: dict[int, str] = {}
    n = 0
    while len(found) < SLOTS:
        # Redis Cluster's slot of a key with hash tag {t}: CRC16-XMODEM(t) mod 16384.
        found.setdefault(binascii.crc_hqx(b"%d" % n, 0) % SLOTS, str(n))
        n += 1
    return tuple(found[slot] for slot in range(SLOTS))


def probe_slot(ranges: Sequence[tuple[int, int]]) -> int:
    """The slot that stands for a primary serving `ranges`: its first marker slot (one in
    MARKER_STRIDE), else its first slot."""
    for start, end in ranges:
        aligned = -(-start // MARKER_STRIDE) * MARKER_STRIDE
        if aligned <= end:
            return aligned
    return ranges[0][0]


def cluster_client(url: MultiHostURL, *, timeout: float, connect_timeout: float) -> RedisCluster:
    """A `RedisCluster` on the URL's startup nodes, with the store's short timeouts."""
    options: dict[str, Any] = {}
    if "max_connections" in url.options:
        options["max_connections"] = url.options["max_connections"]
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in url.hosts],
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        # One retry, after redis-py refreshed the slot map (a MOVED or a dead node); waiting out a
        # failover belongs to the circuit breaker, not to each request.
        retry=Retry(NoBackoff(), 1),
        # A MOVED patches the one slot. By default every 5th MOVED re-reads the whole slot map,
        # closing every connection of the client, those in use by other reads too: in a
        # resharding that failed unrelated reads and writes (a dead node still triggers a refresh).
        reinitialize_steps=0,
        **url.node_kwargs(),
        **options,
    )


def parse_slots(reply: Sequence[Any], asked_host: str) -> Layout:
    """A `Layout` from a CLUSTER SLOTS reply (RESP2)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for entry in reply:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        # An empty (or "?") host means "the address you reached me on".
        host = primary[0] if primary[0] not in ("", "?") else asked_host
        ranges.setdefault(f"{host}:{int(primary[1])}", []).append((start, end))
    return {name: tuple(sorted(spans)) for name, spans in sorted(ranges.items())}


def with_slotless_primaries(layout: Layout, nodes: str) -> Layout:
    """`layout` plus the primaries that serve no slot yet (from a CLUSTER NODES reply), with no
    ranges: a primary added to the cluster takes keys while slots migrate to it (IMPORTING) before
    it serves any, and changes to those keys must be listened to there too."""
    extra: dict[str, tuple[tuple[int, int], ...]] = {}
    for line in nodes.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = set(fields[2].split(","))
        if "master" not in flags or flags & {"fail", "fail?", "handshake", "noaddr"}:
            continue
        address = fields[1].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            continue
        name = f"{host}:{port}"
        if name not in layout and fields[7] == "connected":
            extra[name] = ()
    return {**layout, **dict(sorted(extra.items()))}


class ClusterTopology:
    """The cluster's primaries and their slots, asked of any node that answers (CLUSTER SLOTS).

    Serves the invalidation listener (one subscriber per primary, re-established when the layout
    changes) and the store (marker and barrier keys per primary).
    """

    dynamic = True

    def __init__(
        self,
        client: RedisCluster,
        url: MultiHostURL,
        *,
        timeout: float,
        connect_timeout: float,
    ) -> None:
        self._client = client
        self._seeds = [f"{host}:{port}" for host, port in url.hosts]
        self._node_kwargs = url.node_kwargs()
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._probes: dict[str, aioredis.Redis] = {}
        # Nodes whose last probe failed: asked last, so that a dead primary (whose address may
        # not even refuse the connection, only time out) does not delay every discovery.
        self._failed: set[str] = set()
        self.layout: Layout = {}
        self._initializing: set[asyncio.Future[Any]] = set()  # see `initialize`
        # Called when a read was redirected (the listener then looks at the layout now).
        self.hint: Callable[[], None] = lambda: None

    def _connection(self, node: str, **extra: Any) -> aioredis.Redis:
        host, _, port = node.rpartition(":")
        return aioredis.Redis(
            host=host.strip("[]"),
            port=int(port),
            decode_responses=True,
            protocol=2,
            socket_connect_timeout=self._connect_timeout,
            retry=Retry(NoBackoff(), 0),
            **self._node_kwargs,
            **extra,
        )

    async def discover(self) -> Mapping[str, Hashable]:
        """The current layout (and remember it); raises `RedisError` if no node answers."""
        candidates = [*self.layout, *(node.name for node in self._client.get_nodes()), *self._seeds]
        # sorted() is stable: the nodes that answered last time first, in their order.
        ordered = sorted(dict.fromkeys(candidates), key=lambda node: node in self._failed)
        errors: list[str] = []
        for node in ordered:
            probe = self._probes.get(node)
            if probe is None:
                probe = self._probes[node] = self._connection(node, socket_timeout=self._timeout)
            try:
                reply = await probe.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as error:
                errors.append(f"{node}: {error}")
                self._failed.add(node)
                continue
            self._failed.discard(node)
            layout = parse_slots(reply, node.rpartition(":")[0])
            if layout:
                try:
                    nodes = await probe.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
                except (RedisError, OSError) as error:
                    errors.append(f"{node}: {error}")
                    continue
                layout = with_slotless_primaries(layout, nodes)
                previous, self.layout = self.layout, layout
                await self._forget_probes(keep={*layout, *candidates})
                self._failed &= set(self._probes)
                if previous and layout != previous:
                    await self.refresh_client()
                return layout
            errors.append(f"{node}: no slots assigned")
        raise RedisConnectionError(f"no Redis Cluster node told its slots ({'; '.join(errors)})")

    async def refresh_client(self) -> None:
        """Make redis-py's client read the slot map now: the layout changed (a failover, a
        resharding). Its own refresh after a connection error is paced (at most once a second in
        redis-py 8.2), which kept a promoted replica's slots failing for up to a second more in
        the reads and writes that go through it (marker reads, admin writes, redirected reads).
        A refresh that fails leaves its current map, which its own error handling refreshes."""
        with contextlib.suppress(RedisError, OSError, RuntimeError, RedisClusterException):
            await self.initialize(self._client.nodes_manager.initialize)

    def initialize(self, call: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        """Run a slot-map read of redis-py's client (`call()`) to its end even if the caller is
        cancelled: one cut short (a `close()` during `connect()`) leaves the connections it opened
        to nobody, never closed ("Unclosed ClusterNode"). The store's close waits for them."""
        task = asyncio.ensure_future(call())
        self._initializing.add(task)
        task.add_done_callback(self._initializing.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return asyncio.shield(task)

    def initializing(self) -> set[asyncio.Future[Any]]:
        """The slot-map reads `initialize` started that are still running."""
        return {task for task in self._initializing if not task.done()}

    async def _forget_probes(self, keep: set[str]) -> None:
        # Nodes come and go over a cluster's life (replaced machines, resharding).
        for node in [node for node in self._probes if node not in keep]:
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await self._probes.pop(node).aclose()

    def subscriber(self, node: str) -> aioredis.Redis:
        return self._connection(node)

    def tags(self, layout: Mapping[str, Hashable]) -> list[str]:
        """One hash tag per primary of `layout`, mapping to its `probe_slot`."""
        tags = slot_tags()
        return [
            "{" + tags[probe_slot(ranges)] + "}"
            for ranges in layout.values()
            if isinstance(ranges, tuple) and ranges
        ]

    def marker_tags(self, layout: Mapping[str, Hashable]) -> list[str]:
        """The hash tags of every marker slot, and of each primary's `probe_slot` in `layout`."""
        tags = slot_tags()
        every = ["{" + tags[slot] + "}" for slot in range(0, SLOTS, MARKER_STRIDE)]
        return list(dict.fromkeys([*every, *self.tags(layout)]))

    async def aclose(self) -> None:
        probes, self._probes = self._probes, {}
        for probe in probes.values():
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await probe.aclose()


# Error replies to a read on a node's own connection that mean "ask redis-py", which follows
# them: the slot moved (MOVED, ASK), is moving (TRYAGAIN), or the cluster is reconfiguring.
_REDIRECTIONS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")


def _address(node: str) -> tuple[str, int]:
    """("host", port) of a node name "host:port", "[v6]:port" or "v6:port"; ValueError if bad."""
    host, _, port_text = node.rpartition(":")
    port = int(port_text)
    if not host or not 0 < port < 65536:
        raise ValueError(f"not a node address: {node!r}")
    return host.strip("[]"), port


class ClusterWires:
    """Cache-miss reads on a Redis Cluster, each on one multiplexed connection (`Multiplexer`) to
    the primary of the token's slot.

    Slots map to primaries by the topology's layout (CLUSTER SLOTS, refreshed by the
    invalidation listener every few seconds) and by the MOVED replies seen since. Until a layout
    is known, and for any read that is redirected or whose node is gone, reads go through
    redis-py's `RedisCluster`, which follows redirections and failovers; a stale route costs one
    round trip more, never a wrong answer (a node that does not serve a slot answers MOVED).
    """

    def __init__(
        self, topology: ClusterTopology, url: MultiHostURL, *, timeout: float, connect_timeout: float
    ) -> None:
        self._topology = topology
        self._url = url
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._layout: Layout | None = None
        self._nodes: dict[tuple[str, int], Multiplexer] = {}
        self._by_slot: list[Multiplexer | None] = [None] * SLOTS
        self._closed = False

    def for_tag(self, tag: str) -> Multiplexer | None:
        if self._topology.layout is not self._layout and not self._closed:
            self._follow(self._topology.layout)
        return self._by_slot[binascii.crc_hqx(tag.encode(), 0) % SLOTS]

    def redirected(self, tag: str, error: BaseException) -> bool:
        # A refused or lost connection (a dead node), or one closed because the node left the
        # layout, goes to redis-py too; a timeout does not (waiting belongs to the breaker), nor
        # does a store that is closing.
        kind = getattr(error, "kind", None)
        if kind in ("connection", "left"):
            return True
        text = str(error)
        if kind != "reply" or not text.startswith(_REDIRECTIONS):
            return False
        if text.startswith("MOVED ") and not self._closed:
            self._topology.hint()
            # "MOVED <slot> <host>:<port>": the slot's primary now; later reads go there. An
            # empty or "?" host means "the host you asked": not worth guessing, redis-py knows.
            with contextlib.suppress(ValueError):
                _, slot_text, node = text.split(" ", 2)
                slot = int(slot_text)
                if 0 <= slot < SLOTS and not node.startswith((":", "?")):
                    self._by_slot[slot] = self._node(node)
        return True

    def _follow(self, layout: Layout) -> None:
        # The listener polls the layout every few seconds, each time a new mapping; only a
        # different one replaces the routes (and the MOVED replies learnt since).
        unchanged = layout == self._layout
        self._layout = layout
        if unchanged:
            return
        by_slot: list[Multiplexer | None] = [None] * SLOTS
        for node, ranges in layout.items():
            with contextlib.suppress(ValueError):  # a node name we cannot use: redis-py's slots
                wire = self._node(node)
                for start, end in ranges:
                    by_slot[start : end + 1] = [wire] * (end - start + 1)
        self._by_slot = by_slot
        # Nodes that left the layout (replaced, demoted, removed) lose their connections, and
        # their pending reads go to redis-py; one a MOVED reply pointed to stays until the next
        # layout says otherwise.
        keep = set()
        for node in layout:
            with contextlib.suppress(ValueError):
                keep.add(_address(node))
        for address in [address for address in self._nodes if address not in keep]:
            self._nodes.pop(address).close(WireError("the node left the cluster layout", "left"))

    def _node(self, node: str) -> Multiplexer:
        """The connection to `node` ("host:port", IPv6 hosts bare or in brackets), made once.
        Raises ValueError for a name that is not one."""
        address = _address(node)
        wire = self._nodes.get(address)
        if wire is None:
            wire = self._nodes[address] = Multiplexer(
                self._url.node_url(*address),
                timeout=self._timeout,
                connect_timeout=self._connect_timeout,
            )
        return wire

    def close(self) -> None:
        self._closed = True
        nodes, self._nodes = self._nodes, {}
        self._by_slot = [None] * SLOTS
        for wire in nodes.values():
            wire.close()

    def reopen(self) -> None:
        """Undo `close`: routes are learnt again from the next layout."""
        self._closed = False
        self._layout = None
