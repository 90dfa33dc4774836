"""Redis Sentinel: a client that follows the current master, and the master as a topology.

Reads and writes both go to the master (reads from a replica could miss a change that the
invalidation of the master already reported). After a failover the listener asks the sentinels at
once: every sentinel's `+switch-master` announcement is listened to (and, as a fallback, the
sentinels are asked every 0.1 s while the master is down, every `topology_interval` otherwise);
the new master's entries are then read again and tracking starts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelManagedConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from validator.errors import ConfigurationError
from validator.store.urls import MultiHostURL
from validator.store.wire import Multiplexer, WireError

__all__ = ["SentinelTopology", "SentinelWire", "sentinel_client"]

log = logging.getLogger("validator")

DEFAULT_PORT = 26379
# The channel on which a sentinel announces a failover's new master.
SWITCH_MASTER = "+switch-master"
# Seconds between pings on an idle +switch-master subscription (and to wait for the answer), and
# the backoff of its reconnections.
_WATCH_PING = 5.0
_WATCH_BACKOFF_MIN = 0.1
_WATCH_BACKOFF_MAX = 5.0
URL_OPTIONS = {"db", "sentinel_username", "sentinel_password"}


class _Sentinel(Sentinel):
    """redis-py's Sentinel, but believing the sentinel with the newest configuration.

    redis-py takes the first sentinel that names a master. Right after a failover the sentinels
    that have not heard of it yet still name the old master, which (if alive) still takes reads
    and writes until it is demoted: the store and the listener could then flip between the two.
    Every sentinel is asked at once and the master with the highest config epoch wins.
    """

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        replies = await asyncio.gather(
            *(sentinel.sentinel_masters() for sentinel in self.sentinels), return_exceptions=True
        )
        best: dict[str, Any] | None = None
        errors: list[str] = []
        for sentinel, reply in zip(self.sentinels, replies, strict=True):
            if isinstance(reply, (RedisError, OSError)):
                errors.append(f"{sentinel}: {reply!r}")
                continue
            if isinstance(reply, BaseException):
                raise reply
            state: dict[str, Any] | None = cast(dict[str, Any], reply).get(service_name)
            if state is None or not self.check_master_state(state, service_name):
                continue
            if best is None or state["config-epoch"] > best["config-epoch"]:
                best = state
        if best is None:
            raise MasterNotFoundError(f"no master found for {service_name!r}: {'; '.join(errors)}")
        return best["ip"], int(best["port"])


class _MasterConnection(SentinelManagedConnection):
    """A connection to the master that asks the sentinels where the master is whenever it
    (re)connects.

    redis-py 8.1 asks only when its pool hands out a closed connection; a connection that
    reconnects by itself (the retry after "the previous master is now a slave") goes back to
    the address it had: the demoted master, which refuses writes, or serves reads it no longer
    gets changes for.
    """

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class _MasterSSLConnection(_MasterConnection, SSLConnection):
    pass


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
    sentinel = _Sentinel(
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
        connection_class=_MasterSSLConnection if url.tls else _MasterConnection,
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
        self,
        sentinel: Sentinel,
        service: str,
        master: aioredis.Redis,
        url: MultiHostURL,
        *,
        connect_timeout: float,
    ) -> None:
        self._sentinel = sentinel
        self._service = service
        self._master = master
        # The master the sentinels named last (host, port).
        self.master_address: tuple[str, int] | None = None
        self._node_kwargs = url.node_kwargs()
        self.db: int = url.options.get("db", 0)
        self._connect_timeout = connect_timeout
        # Called when a read found the master demoted, or a sentinel announced a new master (the
        # listener then asks the sentinels now).
        self.hint: Callable[[], None] = lambda: None
        # One `+switch-master` subscription per sentinel (see `_watch`), from the first `discover`.
        self._watchers: list[asyncio.Task[None]] = []
        self._watching: dict[int, PubSub] = {}
        self._sentinel_kwargs = {
            **self._sentinel.sentinel_kwargs,
            "decode_responses": True,
            "protocol": 2,
            "socket_timeout": None,
        }
        self._sentinel_hosts = list(url.hosts)
        # When a sentinel last announced a new master of this service (time.monotonic()).
        self.switched_at: float | None = None

    async def discover(self) -> Mapping[str, Hashable]:
        if not self._watchers:
            self._watchers = [
                asyncio.ensure_future(self._watch(index, host, port))
                for index, (host, port) in enumerate(self._sentinel_hosts)
            ]
        host, port = await self._sentinel.discover_master(self._service)
        if self.master_address is not None and self.master_address != (host, port):
            # A failover that left the old master up (demoted later, or cut off) leaves the
            # store's pooled connections on it, reading what the new master no longer says.
            # Closing them all, busy ones too, before the listener subscribes to the new master
            # and the cache is refilled makes every later read ask the sentinels again.
            await self._master.connection_pool.disconnect(inuse_connections=True)
        self.master_address = (host, port)
        return {f"{host}:{port}": "master"}

    def subscriber(self, node: str) -> aioredis.Redis:
        host, _, port = node.rpartition(":")
        return aioredis.Redis(
            host=host,
            port=int(port),
            db=self.db,
            decode_responses=True,
            protocol=2,
            socket_connect_timeout=self._connect_timeout,
            retry=Retry(NoBackoff(), 0),
            **self._node_kwargs,
        )

    async def _watch(self, index: int, host: str, port: int) -> None:
        """Listen to one sentinel's `+switch-master` events until cancelled, reconnecting with
        backoff: the listener asks the sentinels at once when one announces a new master of this
        service, rather than at its next look (every 0.1 s while the old master is down, every
        `topology_interval` while it lives on, demoted later). Every sentinel is listened to: any
        of them may be down, and the leader of the failover announces it first."""
        delay = _WATCH_BACKOFF_MIN
        while True:
            client = aioredis.Redis(host=host, port=port, **self._sentinel_kwargs)
            pubsub = self._watching[index] = client.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(SWITCH_MASTER), _WATCH_PING)
                delay = _WATCH_BACKOFF_MIN
                ping_sent: float | None = None
                while True:
                    message = await pubsub.get_message(timeout=_WATCH_PING)
                    if message is None:
                        # A sentinel that stops answering (cut off) is left for a new connection.
                        if ping_sent is not None and time.monotonic() - ping_sent > _WATCH_PING:
                            raise RedisConnectionError(f"no answer to a ping within {_WATCH_PING} s")
                        if ping_sent is None:
                            await pubsub.ping()
                            ping_sent = time.monotonic()
                        continue
                    ping_sent = None
                    data = message.get("data")
                    # "<service> <old ip> <old port> <new ip> <new port>"
                    if message["type"] == "message" and str(data).split(" ", 1)[0] == self._service:
                        self.switched_at = time.monotonic()
                        log.info("sentinel %s:%s announced a new master: %s", host, port, data)
                        self.hint()
            except (RedisError, OSError, TimeoutError, RuntimeError) as error:
                log.debug("sentinel %s:%s: +switch-master subscription lost (%s)", host, port, error)
            finally:
                if self._watching.get(index) is pubsub:
                    del self._watching[index]
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _WATCH_BACKOFF_MAX)

    async def aclose(self) -> None:
        watchers, self._watchers = self._watchers, []
        for task in watchers:
            task.cancel()
        if watchers:
            _, pending = await asyncio.wait(watchers, timeout=0.5)
            if pending:
                # A read that swallowed the cancellation (redis-py issue 2551): cut its connection.
                for pubsub in list(self._watching.values()):
                    connection = pubsub.connection
                    writer = getattr(connection, "_writer", None) if connection is not None else None
                    if writer is not None:
                        writer.transport.abort()
                await asyncio.wait(pending, timeout=0.5)
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            await self._sentinel.aclose()


# Error replies to a read on the master's own connection that mean "ask redis-py", which asks
# the sentinels again: the server is no longer a writable master, or is loading.
_ELSEWHERE = ("READONLY", "MASTERDOWN", "LOADING")


class SentinelWire:
    """Cache-miss reads on one multiplexed connection (`Multiplexer`) to the master the
    sentinels named last, as the invalidation listener asks them every few seconds.

    Until a master is known, and for any read whose master is gone, reads go through redis-py,
    which asks the sentinels. When the sentinels name another master, the connection to the old
    one is closed (its pending reads go to redis-py) and the next read connects to the new one.
    """

    def __init__(
        self, topology: SentinelTopology, url: MultiHostURL, *, timeout: float, connect_timeout: float
    ) -> None:
        self._topology = topology
        self._url = url
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._address: tuple[str, int] | None = None
        self._wire: Multiplexer | None = None
        self._closed = False

    def for_tag(self, tag: str) -> Multiplexer | None:
        if self._topology.master_address != self._address and not self._closed:
            self._follow(self._topology.master_address)
        return self._wire

    def redirected(self, tag: str, error: BaseException) -> bool:
        # The master is gone (refused, lost) or was left for a new one; not a timeout (waiting
        # belongs to the breaker), nor a store that is closing.
        kind = getattr(error, "kind", None)
        if kind == "reply" and str(error).startswith(_ELSEWHERE):
            self._topology.hint()
            return True
        return kind in ("connection", "left")

    def _follow(self, address: tuple[str, int] | None) -> None:
        old, self._wire, self._address = self._wire, None, address
        if old is not None:
            old.close(WireError("the sentinels name another master", "left"))
        if address is not None:
            host, port = address
            self._wire = Multiplexer(
                self._url.node_url(host, port, self._topology.db),
                timeout=self._timeout,
                connect_timeout=self._connect_timeout,
            )

    def close(self) -> None:
        self._closed = True
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    def reopen(self) -> None:
        """Undo `close`: the next read connects to the master the sentinels name."""
        self._closed = False
