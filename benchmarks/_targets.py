"""The Redis a benchmark talks to, by store URL: one server (`redis://`), a Redis Cluster
(`redis+cluster://`) or a Sentinel-managed master (`redis+sentinel://`).

The library reads these URLs itself. The baselines get what a team would write with plain
redis-py (`plain_client`); the raw floor gets one multiplexed connection per primary, chosen by
the key's slot (`RawRouter`); `forget` deletes a run's keys from every primary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.cluster
import redis.sentinel
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot

from benchmarks._rawclient import RawRedis
from validator.store import cluster as _cluster
from validator.store import sentinel as _sentinel
from validator.store.urls import MultiHostURL, parse_multihost

__all__ = ["Kind", "RawRouter", "forget", "kind", "plain_client"]

Kind = Literal["redis", "cluster", "sentinel"]


def kind(url: str) -> Kind:
    scheme = urlsplit(url).scheme
    if scheme.endswith("+cluster"):
        return "cluster"
    if scheme.endswith("+sentinel"):
        return "sentinel"
    return "redis"


def _parsed(url: str) -> MultiHostURL:
    if kind(url) == "cluster":
        return parse_multihost(url, default_port=6379, options=_cluster.URL_OPTIONS)
    return parse_multihost(url, default_port=_sentinel.DEFAULT_PORT, options=_sentinel.URL_OPTIONS)


def _sentinel_args(url: str) -> tuple[MultiHostURL, str, dict[str, Any]]:
    parsed = _parsed(url)
    return parsed, _sentinel.service_name(parsed, url), parsed.node_kwargs()


def plain_client(url: str, **options: Any) -> aioredis.Redis | RedisCluster:
    """A `redis.asyncio` client of `url` as a team would make it with redis-py (hiredis parser,
    default pools, strings): `Redis.from_url`, `RedisCluster` from the startup nodes, or the
    master of a `Sentinel`."""
    target = kind(url)
    if target == "cluster":
        parsed = _parsed(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.hosts],
            decode_responses=True,
            **parsed.node_kwargs(),
            **options,
        )
    if target == "sentinel":
        parsed, service, node = _sentinel_args(url)
        sentinel = Sentinel(parsed.hosts, sentinel_kwargs=node)
        master: aioredis.Redis = sentinel.master_for(
            service, decode_responses=True, db=parsed.options.get("db", 0), **node, **options
        )
        return master
    return aioredis.Redis.from_url(url, decode_responses=True, **options)


@contextlib.contextmanager
def _sync_primaries(url: str) -> Iterator[list[redis.Redis]]:
    """A synchronous client of each primary (one for a single server or a Sentinel's master)."""
    target = kind(url)
    if target == "cluster":
        parsed = _parsed(url)
        cluster = redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in parsed.hosts],  # type: ignore[no-untyped-call]
            **parsed.node_kwargs(),
        )
        try:
            yield [cluster.get_redis_connection(node) for node in cluster.get_primaries()]  # type: ignore[no-untyped-call]
        finally:
            cluster.close()
        return
    if target == "sentinel":
        parsed, service, node = _sentinel_args(url)
        sentinel = redis.sentinel.Sentinel(parsed.hosts, sentinel_kwargs=node)
        client = sentinel.master_for(service, db=parsed.options.get("db", 0), **node)
    else:
        client = redis.Redis.from_url(url)
    try:
        yield [client]
    finally:
        client.close()


def forget(url: str, patterns: list[str]) -> None:
    """Delete the keys matching any of `patterns` (SCAN MATCH syntax) on every primary, one key
    per UNLINK (a cluster refuses a command over keys of different slots)."""
    with _sync_primaries(url) as primaries:
        for client in primaries:
            for pattern in patterns:
                pipe = client.pipeline(transaction=False)
                for n, key in enumerate(client.scan_iter(match=pattern, count=1000), 1):
                    pipe.unlink(key)
                    if n % 1000 == 0:
                        pipe.execute()
                pipe.execute()


def flush(url: str) -> None:
    """Empty every primary: for a throwaway server only."""
    with _sync_primaries(url) as primaries:
        for client in primaries:
            client.flushdb()


class RawRouter:
    """The raw floor's connections: one `RawRedis` per primary, and `for_key(key)` the one that
    serves the key's slot (for one server: always the one). The layout is read once, before
    timing; a benchmark does not reshard."""

    def __init__(self, clients: list[RawRedis], by_slot: list[RawRedis] | None) -> None:
        self.clients = clients
        if by_slot is None:
            only = clients[0]
            self.for_key: Callable[[str], RawRedis] = lambda key: only
        else:
            self.for_key = lambda key: by_slot[key_slot(key.encode())]

    @classmethod
    async def connect(cls, url: str) -> RawRouter:
        target = kind(url)
        if target == "cluster":
            cluster = plain_client(url)
            assert isinstance(cluster, RedisCluster)
            await cluster.initialize()
            try:
                nodes = [cluster.nodes_manager.get_node_from_slot(slot) for slot in range(_cluster.SLOTS)]
            finally:
                await cluster.aclose()
            clients = {node.name: await RawRedis.connect(node.host, int(node.port)) for node in set(nodes)}
            return cls(list(clients.values()), [clients[node.name] for node in nodes])
        if target == "sentinel":
            parsed, service, node = _sentinel_args(url)
            sentinel = Sentinel(parsed.hosts, sentinel_kwargs=node)
            host, port = await sentinel.discover_master(service)
            for client in sentinel.sentinels:
                await client.aclose()
            return cls([await RawRedis.connect(host, int(port))], None)
        parts = urlsplit(url)
        return cls([await RawRedis.connect(parts.hostname or "127.0.0.1", parts.port or 6379)], None)

    def close(self) -> None:
        for client in self.clients:
            client.close()
