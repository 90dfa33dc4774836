"""The alternatives our code is measured against: the hand-written floor of a cached check, the
per-request Redis checks a team would write (redis-py) or could write at best (raw client), and
the afternoon implementation with a cache (`PeerCheck`: redis-py + hiredis + cachetools)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from cachetools import TTLCache
from redis.asyncio.cluster import RedisCluster

from benchmarks._targets import RawRouter, plain_client
from validator import Store

__all__ = [
    "FloorTable",
    "PeerCheck",
    "PeerEntry",
    "RawCheck",
    "RedisPyCheck",
    "decide",
    "floor_check",
    "floor_check_async",
    "host",
]

# token -> (domain list, IP list), both restrictions on: the least a cache can hold.
FloorTable = dict[str, tuple[frozenset[str], frozenset[str]]]


def host(origin: str) -> str:
    """The host cut of the floor: after `://`, up to the first `/` or `:`, lower-cased."""
    start = origin.find("://") + 3
    end = len(origin)
    for delimiter in "/:":
        i = origin.find(delimiter, start)
        if i != -1 and i < end:
            end = i
    return origin[start:end].lower()


def floor_check(table: FloorTable, token: str, origin: str | None, client_ip: str | None) -> bool:
    """The floor of a cached check: one dict look-up, the host cut, one set membership."""
    entry = table.get(token)
    if entry is None:
        return True
    if origin is not None:
        start = origin.find("://") + 3
        end = origin.find("/", start)
        return (origin[start:] if end == -1 else origin[start:end]).lower() in entry[0]
    return client_ip in entry[1]


async def floor_check_async(table: FloorTable, token: str, origin: str | None, client_ip: str | None) -> bool:
    """`floor_check` as a coroutine (the same body inline): the floor of an awaited check."""
    entry = table.get(token)
    if entry is None:
        return True
    if origin is not None:
        start = origin.find("://") + 3
        end = origin.find("/", start)
        return (origin[start:] if end == -1 else origin[start:end]).lower() in entry[0]
    return client_ip in entry[1]


def decide(meta: Mapping[str, str], domains: Sequence[str] | set[str], ips: Sequence[str] | set[str],
           origin: str | None, client_ip: str | None) -> bool:  # fmt: skip
    """The decision table (docs/behaviour.md) on freshly read data, as a per-request implementation would."""
    if not meta:
        return True  # unknown token: unrestricted
    domain_on, ip_on = meta.get("d") == "1", meta.get("i") == "1"
    if origin is not None:
        return host(origin) in set(domains) if domain_on else not ip_on
    return client_ip in set(ips) if ip_on else not domain_on


class RedisPyCheck:
    """The naive per-request check a team would write: plain `redis.asyncio` (hiredis parser,
    connection pool), per check HGETALL + SMEMBERS x2 of the token's keys in one pipeline
    (on a Redis Cluster, `RedisCluster`'s pipeline: the keys share a hash tag, so one node).

    redis-py's default pool refuses a 101st connection; with `blocking` (one server only),
    callers beyond 100 wait for a free connection instead (`BlockingConnectionPool`), as one
    would configure for bursts."""

    def __init__(self, url: str, store: Store, *, blocking: bool = False) -> None:
        self.client: aioredis.Redis | RedisCluster
        if blocking:
            pool = aioredis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=100)
            self.client = aioredis.Redis(connection_pool=pool)
        else:
            self.client = plain_client(url)
        self.store = store

    async def check(self, token: str, origin: str | None, client_ip: str | None) -> bool:
        meta_key, domains_key, ips_key = self.store.keys(self.store.token_hash(token))
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(meta_key)
        pipe.smembers(domains_key)
        pipe.smembers(ips_key)
        meta, domains, ips = await pipe.execute()
        return decide(meta, domains, ips, origin, client_ip)

    async def close(self) -> None:
        await self.client.aclose()


class RawCheck:
    """The floor of a Redis read from Python: the same three commands, written together on one
    multiplexed connection (`RawRedis`) to the node that serves them, parsed by hiredis."""

    def __init__(self, router: RawRouter, store: Store) -> None:
        self.router = router
        self.store = store

    async def check(self, token: str, origin: str | None, client_ip: str | None) -> bool:
        meta_key, domains_key, ips_key = self.store.keys(self.store.token_hash(token))
        flat, domains, ips = await self.router.for_key(meta_key).pipeline(
            (("HGETALL", meta_key), ("SMEMBERS", domains_key), ("SMEMBERS", ips_key))
        )
        meta = dict(zip(flat[::2], flat[1::2], strict=True))
        return decide(meta, domains, ips, origin, client_ip)


# A peer's cache entry: (domains on?, IPs on?, domains, IPs); None for an unknown token.
PeerEntry = tuple[bool, bool, frozenset[str], frozenset[str]] | None


class PeerCheck:
    """The afternoon implementation a team would write instead of the library: plain
    `redis.asyncio` (hiredis parser, connection pool) reading the library's own keys (HGETALL +
    SMEMBERS x2 in one pipeline, as `RedisPyCheck`), each record kept decoded in a
    `cachetools.TTLCache` (`maxsize` records, `ttl` seconds), the decision made on the cached
    sets. No invalidation, no stale-if-error, no shared loads: what it lacks is not timed, only
    what it does."""

    def __init__(self, url: str, store: Store, *, maxsize: int, ttl: float) -> None:
        self.client = plain_client(url)
        self.store = store
        self.cache: TTLCache[str, PeerEntry] = TTLCache(maxsize=maxsize, ttl=ttl)

    async def load(self, token: str) -> PeerEntry:
        meta_key, domains_key, ips_key = self.store.keys(self.store.token_hash(token))
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(meta_key)
        pipe.smembers(domains_key)
        pipe.smembers(ips_key)
        meta, domains, ips = await pipe.execute()
        entry: PeerEntry = (
            (meta.get("d") == "1", meta.get("i") == "1", frozenset(domains), frozenset(ips)) if meta else None
        )
        self.cache[token] = entry
        return entry

    async def check(self, token: str, origin: str | None, client_ip: str | None) -> bool:
        try:
            entry = self.cache[token]
        except KeyError:
            entry = await self.load(token)
        if entry is None:
            return True  # unknown token: unrestricted
        domain_on, ip_on, domains, ips = entry
        if origin is not None:
            return host(origin) in domains if domain_on else not ip_on
        return client_ip in ips if ip_on else not domain_on

    async def close(self) -> None:
        await self.client.aclose()
