"""The wiped-store marker (docs/behaviour.md: a store wiped or never initialised fails checks closed, and
refuses admin writes), read and written by a `Marker` that `Store` owns, and the eviction-policy
check (plain functions over the store's client)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Literal
from urllib.parse import urlsplit

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError

from validator.errors import ConfigurationError, StoreNotInitialised, StoreUnavailable
from validator.store import cluster as _cluster
from validator.store.cluster import ClusterTopology
from validator.store.layout import _store_errors, slot_of

log = logging.getLogger("validator")

# Seconds between two reads of a Redis Cluster's marker by one admin (see `Marker.require`).
_MARKER_RECHECK = 1.0


class Marker:
    """The store's marker: its key(s) and value on `client`, and whether writes must check it
    (`in_script` False: on a Redis Cluster, where the write script cannot reach it)."""

    def __init__(
        self,
        client: Any,
        *,
        key: str,
        value: str,
        cluster: ClusterTopology | None,
        in_script: bool,
    ) -> None:
        self.client = client
        self.key = key
        self.value = value
        self._cluster = cluster
        self.in_script = in_script
        self._checked_at: dict[str, float] = {}

    def is_key(self, key: str) -> bool:
        """Whether `key` is (one of) the store's marker key(s)."""
        return key == self.key or (self._cluster is not None and key.startswith(self.key + "{"))

    def not_initialised(self, state: str) -> StoreNotInitialised:
        """The error that refuses a write on a store whose marker is "missing" or "mismatch"."""
        if state == "mismatch":
            message = (
                "this store is marked for another secret: check VALIDATOR_SECRET (it must be the "
                "validators' secret); nothing was written"
            )
        else:
            message = (
                "this store has no marker (never initialised, or wiped): run `validator-admin init` "
                "for a new store, or restore a wiped one from an export with "
                "`validator-admin import --restore FILE`; nothing was written"
            )
        return StoreNotInitialised(message, state=state)

    async def require(self, token_hash: str | None = None) -> None:
        """Raise `StoreNotInitialised` unless the store is marked (see the comment)."""
        # Only `init` (or the end of a restore) marks a store: a write never does, so a wiped
        # store stays failing closed whatever is written to it. One server checks the marker in
        # the write script itself. A Cluster's marker is read before a write, at most once a
        # second per primary: a wipe within that second is not seen by this admin's next writes,
        # which then create records (never the marker) that the restore of the wiped data may
        # overwrite. A write to one token reads only the marker of the primary serving it, so
        # another primary being down does not stop it (`validator.shards`).
        if self.in_script:
            return
        node, ranges = "*", None
        if token_hash is not None and self._cluster is not None:
            node, ranges = await self._owner(token_hash)
        if time.monotonic() - self._checked_at.get(node, -float("inf")) < _MARKER_RECHECK:
            return
        state = await self.state(ranges)
        if state != "ok":
            raise self.not_initialised(state)
        self._checked_at[node] = time.monotonic()

    async def _owner(self, token_hash: str) -> tuple[str, tuple[tuple[int, int], ...] | None]:
        """The primary serving `token_hash`'s slot, and its slot ranges, by the last layout seen
        (a stale one still names the right marker: a promoted replica serves the same slots)."""
        assert self._cluster is not None
        if not self._cluster.layout:
            with _store_errors():
                await self._cluster.discover()
        slot = slot_of(token_hash)
        for node, ranges in self._cluster.layout.items():
            if any(start <= slot <= end for start, end in ranges):
                return node, ranges
        return "*", None

    async def _probe_keys(self) -> list[str]:
        if self._cluster is None:
            return [self.key]
        with _store_errors():
            layout = await self._cluster.discover()
        await asyncio.to_thread(_cluster.slot_tags)  # computed once, off the event loop
        return [self.key + tag for tag in self._cluster.tags(layout)]

    async def state(
        self, ranges: tuple[tuple[int, int], ...] | None = None
    ) -> Literal["ok", "missing", "mismatch"]:
        """Whether the store carries this deployment's marker (see `write`); on a
        cluster, "missing" as soon as one primary lacks it. With `ranges`, the slot ranges of one
        Cluster primary, only that primary's marker is read (`validator.shards`)."""
        if ranges is None or self._cluster is None:
            keys = await self._probe_keys()
        else:
            tags = await asyncio.to_thread(_cluster.slot_tags)  # computed once, off the event loop
            keys = [self.key + "{" + tags[_cluster.probe_slot(ranges)] + "}"]
        with _store_errors():
            values = await asyncio.gather(*(self.client.get(key) for key in keys))
        if any(value is not None and value != self.value for value in values):
            return "mismatch"
        return "missing" if None in values else "ok"

    async def write(self) -> bool:
        """Mark the store as initialised for this secret; True if it was not marked before.

        Validators treat a store without the marker as wiped (fail closed). Raises
        `ConfigurationError` if the store is marked for another secret. On a cluster the marker
        is one small key per 16th slot (`<prefix>marker{<tag>}`, 1,024 keys) plus one in a slot
        of each primary: every primary holds markers, and they move with their slots when the
        cluster is resharded.
        """
        if self._cluster is None:
            keys = [self.key]
        else:
            with _store_errors():
                layout = await self._cluster.discover()
            await asyncio.to_thread(_cluster.slot_tags)
            keys = [self.key + tag for tag in self._cluster.marker_tags(layout)]
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, self.value, nx=True)
            created = await pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            existing = [key for key, made in zip(keys, created, strict=True) if not made]
            for key in existing:
                pipe.get(key)
            values = await pipe.execute() if existing else []
        if any(value != self.value for value in values):
            raise ConfigurationError(
                f"this store was initialised with another secret (marker {self.key!r} does "
                "not match): check VALIDATOR_SECRET (it must be the validators' secret)"
            )
        return any(created)


async def eviction_policies(
    client: Any, url: str, topology: ClusterTopology | None = None
) -> dict[str, str | None]:
    """The `maxmemory-policy` of every server that holds tokens: {"": policy} for one server,
    {"host:port": policy} per primary of a Cluster; None where `CONFIG GET` is refused (a
    managed Redis, a renamed command, an ACL). Empty for `memory://`. Raises `StoreUnavailable`.
    On a Cluster, the slot map is read through `topology` when there is one: to its end, so that
    a `close()` meanwhile does not leave the connections it opened (`ClusterTopology.initialize`).
    """
    if urlsplit(url).scheme == "memory":
        return {}
    calls: dict[str, Awaitable[Any]] = {}
    if isinstance(client, RedisCluster):
        with _store_errors():
            try:
                await (
                    topology.initialize(client.initialize) if topology is not None else client.initialize()
                )
            except RedisClusterException as error:  # not a RedisError: no node answered
                raise RedisConnectionError(str(error)) from error
        for node in client.get_primaries():
            calls[node.name] = client.config_get("maxmemory-policy", target_nodes=node)
    else:
        calls[""] = client.config_get("maxmemory-policy")
    names = list(calls)
    with _store_errors():
        replies = await asyncio.gather(*calls.values(), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                raise reply
    return {
        name: None if isinstance(reply, BaseException) else reply.get("maxmemory-policy") or None
        for name, reply in zip(names, replies, strict=True)
    }


async def eviction_risk(
    client: Any, url: str, topology: ClusterTopology | None = None
) -> tuple[str | None, str | None]:
    """(problem, doubt) about the eviction policy, each a sentence or None: the problem when
    Redis may evict keys without a TTL (`allkeys-*`), for an evicted record makes its token
    unrestricted; the doubt when `CONFIG GET` is refused so the policy is unknown.
    Raises `StoreUnavailable`."""
    policies = await eviction_policies(client, url, topology)
    evicting = [
        f"{policy} on {node}" if node else policy
        for node, policy in policies.items()
        if policy is not None and policy.startswith("allkeys-")
    ]
    refused = [node or "the server" for node, policy in policies.items() if policy is None]
    problem = doubt = None
    if evicting:
        problem = (
            f"Redis may evict token records (maxmemory-policy {', '.join(evicting)}), and an "
            "evicted record leaves its token unrestricted: run `CONFIG SET maxmemory-policy "
            "noeviction` (or a volatile-* policy) and keep it in the Redis configuration"
        )
    if refused:
        doubt = (
            f"could not check Redis's maxmemory-policy (CONFIG GET refused on {', '.join(refused)}): "
            "make sure it is noeviction or volatile-*, since allkeys-* may evict token records "
            "and leave those tokens unrestricted"
        )
    return problem, doubt


async def log_eviction_risk(client: Any, url: str, topology: ClusterTopology | None = None) -> None:
    """Log `eviction_risk`: the problem as an error, the doubt as a warning. Never raises: an
    unreachable store is not this check's business (checks fail closed until it answers)."""
    try:
        problem, doubt = await eviction_risk(client, url, topology)
    except StoreUnavailable as error:
        log.debug("eviction policy not checked: %s", error)
        return
    if problem is not None:
        log.error(problem)
    if doubt is not None:
        log.warning(doubt)
