"""Server-assisted invalidation: Redis tells every validator process which keys changed.

One connection per process turns on `CLIENT TRACKING ... BCAST PREFIX <key prefix>` with
`REDIRECT` to itself and subscribes to `__redis__:invalidate` (RESP2: redis-py's asyncio pub/sub
sees the messages only there). Redis then sends the name of every key under the prefix that any
client changes, including `redis-cli` by hand, and a null payload on FLUSHALL/FLUSHDB. See
https://redis.io/docs/latest/develop/reference/client-side-caching/ ("broadcasting mode").

Whenever this connection is not known to be alive, changes may be missed, so the cache is
dropped: when it is lost, when a ping on it goes unanswered, and again when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from validator.errors import ConfigurationError

__all__ = ["InvalidationListener"]

log = logging.getLogger("validator")

CHANNEL = "__redis__:invalidate"
CLIENT_NAME = "validator-invalidation"


class _Silent(Exception):
    """The connection stopped answering pings."""


class InvalidationListener:
    """Runs in the background; calls `on_keys` with changed key names, `on_reset` when
    everything must be forgotten, and `on_connected` each time tracking is (re)established."""

    def __init__(
        self,
        client_factory: Callable[[], aioredis.Redis],
        prefix: str,
        *,
        on_keys: Callable[[list[str]], None],
        on_reset: Callable[[], None],
        on_connected: Callable[[], Awaitable[None]],
        ping_interval: float = 1.0,
        ping_timeout: float = 1.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        if ping_interval <= 0 or ping_timeout <= 0 or not 0 < backoff_min <= backoff_max:
            raise ConfigurationError("invalidation ping and backoff settings must be positive")
        self._factory = client_factory
        self._prefix = prefix
        self._on_keys = on_keys
        self._on_reset = on_reset
        self._on_connected = on_connected
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connected = asyncio.Event()
        self.lost = asyncio.Event()  # set while the connection is down after having been up
        self.connections = 0
        self.resets = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="validator-invalidation")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _reset(self) -> None:
        self.resets += 1
        self._on_reset()

    async def _run(self) -> None:
        delay = self.backoff_min
        while True:
            client = self._factory()
            pubsub = client.pubsub()
            try:
                await asyncio.wait_for(self._subscribe(pubsub), self.ping_timeout)
                # Anything may have changed while nobody was listening.
                self._reset()
                self.connections += 1
                self.lost.clear()
                self.connected.set()
                delay = self.backoff_min
                log.info("invalidation: tracking keys under %r", self._prefix)
                await self._on_connected()
                await self._listen(pubsub)
            except (RedisError, OSError, TimeoutError, _Silent) as error:
                log.warning(
                    "invalidation connection lost (%s); cache dropped, reconnecting", error or "timeout"
                )
            finally:
                if self.connected.is_set():
                    self.connected.clear()
                    self.lost.set()
                    self._reset()
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await client.aclose()
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
