"""A minimal Redis client, the floor of what Python can do: an `asyncio.Protocol` on one
connection, a hiredis reader, requests multiplexed (pipelined) with a FIFO of waiters and the
writes of one event-loop turn sent together. A baseline for the benchmarks, not library code:
no reconnects, no timeouts, no RESP3."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import hiredis

__all__ = ["RawRedis"]


class RawRedis(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader(encoding="utf-8")
        # One waiter per pipeline: (future, number of replies expected, replies so far).
        self._waiting: collections.deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = (
            collections.deque()
        )
        self._transport: asyncio.WriteTransport | None = None
        self._buffer: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, host: str, port: int) -> RawRedis:
        _, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but it can write.
        self._transport = transport  # type: ignore[assignment]

    def pipeline(self, commands: Sequence[Sequence[str]]) -> asyncio.Future[list[Any]]:
        """Send `commands` (queued until the end of this loop turn); the future gets their replies."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if not self._buffer:
            self._loop.call_soon(self._flush)
        # hiredis' stub types the argument as a 1-tuple; any tuple of arguments is accepted.
        self._buffer.extend(hiredis.pack_command(tuple(command)) for command in commands)  # type: ignore[arg-type]
        self._waiting.append((future, len(commands), []))
        return future

    async def execute(self, *command: str) -> Any:
        replies = await self.pipeline((command,))
        return replies[0]

    def _flush(self) -> None:
        assert self._transport is not None
        self._transport.write(b"".join(self._buffer))
        self._buffer.clear()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while (reply := reader.gets()) is not False:
            future, expected, replies = waiting[0]
            replies.append(reply)
            if len(replies) == expected:
                waiting.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        while self._waiting:
            future, _, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc or ConnectionError("connection closed"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
