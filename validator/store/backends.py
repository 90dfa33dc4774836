"""`Store.from_url`'s registry: one small builder per URL scheme (as limits does).

A builder takes the `Store` class, the URL, the keyword arguments every store takes (secret,
key prefix, limit, URL) and the timeouts, and returns a store; `memory://` registers itself from
`validator.store.memory`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from validator.errors import ConfigurationError
from validator.store import cluster as _cluster
from validator.store import sentinel as _sentinel
from validator.store.invalidation import SingleServer
from validator.store.urls import parse_multihost
from validator.store.wire import Multiplexer, SingleWire

if TYPE_CHECKING:
    from validator.store import Store


Builder = Callable[["type[Store]", str, dict[str, Any], float, float], "Store"]
BACKENDS: dict[str, Builder] = {}


def register(*schemes: str) -> Callable[[Builder], Builder]:
    """Register a builder for the URL schemes `schemes`."""

    def add(builder: Builder) -> Builder:
        for scheme in schemes:
            BACKENDS[scheme] = builder
        return builder

    return add


def _check_server_url(url: str) -> None:
    """Refuse a redis://, rediss:// or unix:// URL that redis-py would misread (no host means
    localhost to it) or fail on only when connecting (a database that is not a number)."""
    parts = urlsplit(url)
    shown = url if parts.password is None else url.replace(f":{parts.password}@", ":***@", 1)
    example = "unix:///path/to/redis.sock?db=0" if parts.scheme == "unix" else "redis://HOST:PORT/DB"
    try:
        port = parts.port
    except ValueError as error:
        raise ConfigurationError(f"bad store URL {shown!r}: {error} (write {example})") from None
    if parts.scheme == "unix":
        db = parse_qs(parts.query).get("db", ["0"])[-1]
        problem = "no socket path" if not parts.path else None
    else:
        path = unquote(parts.path).removeprefix("/")
        db = parse_qs(parts.query).get("db", [path or "0"])[-1]
        problem = "no host" if not parts.hostname else "port 0" if port == 0 else None
    if problem is None and not (db.isascii() and db.isdigit()):
        problem = f"the database {db!r} is not a number"
    if problem is not None:
        raise ConfigurationError(f"bad store URL {shown!r}: {problem} (write {example})")


@register("redis+cluster", "rediss+cluster")
def _redis_cluster(
    cls: type[Store], url: str, common: dict[str, Any], timeout: float, connect_timeout: float
) -> Store:
    parsed = parse_multihost(url, default_port=6379, options=_cluster.URL_OPTIONS)
    if parsed.path not in ("", "/", "/0"):
        raise ConfigurationError(f"bad store URL {url!r}: a Redis Cluster has database 0 only")
    cluster = _cluster.cluster_client(parsed, timeout=timeout, connect_timeout=connect_timeout)
    topology = _cluster.ClusterTopology(cluster, parsed, timeout=timeout, connect_timeout=connect_timeout)
    # Over TLS, reads stay on redis-py: multiplexed TLS is tested on one server only.
    wires = (
        None
        if parsed.tls
        else _cluster.ClusterWires(topology, parsed, timeout=timeout, connect_timeout=connect_timeout)
    )
    return cls(cluster, topology=topology, wires=wires, **common)


@register("redis+sentinel", "rediss+sentinel")
def _redis_sentinel(
    cls: type[Store], url: str, common: dict[str, Any], timeout: float, connect_timeout: float
) -> Store:
    parsed = parse_multihost(url, default_port=_sentinel.DEFAULT_PORT, options=_sentinel.URL_OPTIONS)
    service = _sentinel.service_name(parsed, url)
    sentinel, client = _sentinel.sentinel_client(
        parsed, service, timeout=timeout, connect_timeout=connect_timeout
    )
    sentinel_topology = _sentinel.SentinelTopology(
        sentinel, service, client, parsed, connect_timeout=connect_timeout
    )
    master_wire = (
        None
        if parsed.tls
        else _sentinel.SentinelWire(
            sentinel_topology, parsed, timeout=timeout, connect_timeout=connect_timeout
        )
    )
    return cls(client, topology=sentinel_topology, wires=master_wire, **common)


@register("redis", "rediss", "unix")
def _redis_server(
    cls: type[Store], url: str, common: dict[str, Any], timeout: float, connect_timeout: float
) -> Store:
    _check_server_url(url)
    try:
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            # One immediate retry covers a pooled connection that died with a restart. A
            # timeout is not retried: waiting again belongs to the circuit breaker.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
    except ValueError as error:
        raise ConfigurationError(f"bad store URL {url!r}: {error}") from None

    def listener_client() -> aioredis.Redis:
        # redis-py's asyncio pub/sub sees invalidation messages only on RESP2. No retry: a
        # silent reconnect would resubscribe without CLIENT TRACKING and miss every change.
        return aioredis.Redis.from_url(
            url,
            decode_responses=True,
            protocol=2,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
        )

    return cls(
        client,
        topology=SingleServer(listener_client),
        wires=SingleWire(Multiplexer(url, timeout=timeout, connect_timeout=connect_timeout)),
        **common,
    )
