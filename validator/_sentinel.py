"""Redis Sentinel: a client that follows the current master, and the master as a topology.

Reads and writes both go to the master (reads from a replica could miss a change that the
invalidation of the master already reported). After a failover the old master's connections are
killed by the sentinels, or, if it lives on demoted, the listener sees the new master name within
`topology_interval`; either way the cache is dropped and tracking starts again on the new master.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from validator._urls import MultiHostURL
from validator.errors import ConfigurationError

__all__ = ["SentinelTopology", "sentinel_client"]

DEFAULT_PORT = 26379
URL_OPTIONS = {"db", "sentinel_username", "sentinel_password"}


def service_name(url: MultiHostURL, text: str) -> str:
    name = url.path.strip("/")
    if not name or "/" in name:
        raise ConfigurationError(
            f"bad store URL {text!r}: name the monitored service as the path, "
            "e.g. redis+sentinel://host:26379/mymaster"
        )
    return name


def sentinel_client(
    url: MultiHostURL, service: str, *, timeout: float, connect_timeout: float
) -> tuple[Sentinel, aioredis.Redis]:
    """The `Sentinel` and a client of the master it names, with the store's short timeouts.

    The URL's credentials authenticate to the master and, unless `sentinel_username` or
    `sentinel_password` say otherwise (empty: none), to the sentinels too, as in `limits`.
    """
    node = url.node_kwargs()
    sentinel_auth = {
        "username": url.options.get("sentinel_username", url.username) or None,
        "password": url.options.get("sentinel_password", url.password) or None,
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        url.hosts,
        sentinel_kwargs={
            **node,
            **sentinel_auth,
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            # A sentinel that does not answer is skipped for the next one, not retried.
            "retry": Retry(NoBackoff(), 0),
        },
    )
    client = sentinel.master_for(
        service,
        redis_class=aioredis.Redis,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        # One immediate retry asks the sentinels again: it follows a master that just moved.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        db=url.options.get("db", 0),
        **node,
    )
    return sentinel, client


class SentinelTopology:
    """The master that the sentinels name now."""

    dynamic = True

    def __init__(
        self, sentinel: Sentinel, service: str, url: MultiHostURL, *, connect_timeout: float
    ) -> None:
        self._sentinel = sentinel
        self._service = service
        self._node_kwargs = url.node_kwargs()
        self._db = url.options.get("db", 0)
        self._connect_timeout = connect_timeout

    async def discover(self) -> Mapping[str, Hashable]:
        host, port = await self._sentinel.discover_master(self._service)
        return {f"{host}:{port}": "master"}

    def subscriber(self, node: str) -> aioredis.Redis:
        host, _, port = node.rpartition(":")
        return aioredis.Redis(
            host=host,
            port=int(port),
            db=self._db,
            decode_responses=True,
            protocol=2,
            socket_connect_timeout=self._connect_timeout,
            retry=Retry(NoBackoff(), 0),
            **self._node_kwargs,
        )

    async def aclose(self) -> None:
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            await self._sentinel.aclose()
