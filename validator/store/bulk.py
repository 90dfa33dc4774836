"""The admin's bulk commands on the store: history, pipelined writes and reads (import, export,
restore), and the SCAN of every stored token. `Store` has them through `BulkCommands`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from validator.errors import LimitExceeded
from validator.model import Restrictions
from validator.store.layout import _restrictions, _store_errors


class BulkCommands:
    """The bulk commands of `Store` (on its `client`, with its scripts and key layout)."""

    client: Any
    key_prefix: str
    _read: AsyncScript
    _write: AsyncScript

    if TYPE_CHECKING:

        def keys(self, token_hash: str) -> tuple[str, str, str]: ...
        def hash_of_key(self, key: str) -> str | None: ...
        def history_key(self, token_hash: str) -> str: ...
        async def _require_marker(self) -> None: ...
        def _notify(self, token_hash: str) -> None: ...
        def _write_call(
            self,
            token_hash: str,
            op: str,
            args: Sequence[str],
            *,
            marked: bool = True,
            options: Mapping[str, Any] | None = None,
        ) -> tuple[list[str], list[str | int]]: ...
        def _write_result(self, reply: list[Any]) -> tuple[Restrictions | None, bool]: ...

    async def history(self, token_hash: str, count: int = 50) -> list[str]:
        """The token's `count` most recent history entries (JSON text), newest first."""
        with _store_errors():
            entries = await self.client.lrange(self.history_key(token_hash), 0, count - 1)
        return [entry if isinstance(entry, str) else entry.decode() for entry in entries]

    async def write_many(
        self,
        changes: Sequence[tuple[str, Sequence[str]]],
        *,
        marked: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> list[tuple[Restrictions | None, bool] | LimitExceeded]:
        """Run many `write` changes, each `(token_hash, (op, *args))`, pipelined in one round trip
        (`options` as `write`'s, for every change).

        Each change is atomic on its own, the batch is not. A change refused for the limit comes
        back as its `LimitExceeded` (nothing of it written); raises `StoreNotInitialised` (unless
        `marked` is False: a restore, which writes into an unmarked store) or `StoreUnavailable`.
        """
        results: list[tuple[Restrictions | None, bool] | LimitExceeded] = []
        if marked:
            await self._require_marker()
        with _store_errors():
            replies = await self._evalsha_many(
                self._write,
                [
                    self._write_call(token_hash, op, args, marked=marked, options=options)
                    for token_hash, (op, *args) in changes
                ],
            )
        for (token_hash, _), reply in zip(changes, replies, strict=True):
            try:
                result = self._write_result(reply)
            except LimitExceeded as refused:
                results.append(refused)
                continue
            results.append(result)
            if result[1]:
                self._notify(token_hash)
        return results

    async def read_many(self, token_hashes: Sequence[str]) -> list[Restrictions | None]:
        """Many tokens' restrictions, pipelined in one round trip; None for an unknown token."""
        with _store_errors():
            replies = await self._evalsha_many(
                self._read, [(self.keys(token_hash), ()) for token_hash in token_hashes]
            )
        return [None if reply is None else _restrictions(*reply) for reply in replies]

    async def _evalsha_many(
        self, script: AsyncScript, calls: Sequence[tuple[Sequence[str], Sequence[str | int]]]
    ) -> list[Any]:
        """Run `script` once per (keys, args) in one pipeline: one round trip per node on a
        cluster (redis-py's ClusterPipeline groups the calls by node)."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for n in todo:
                keys, args = calls[n]
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            for n, reply in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                replies[n] = reply
            todo = [n for n in todo if isinstance(replies[n], NoScriptError)]
            if not todo or attempt:
                break
            # A restarted server, or a replica promoted since, does not know the script yet;
            # on a cluster this loads it on every primary.
            await self.client.script_load(script.script)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def scan_hashes(self, count: int = 1000) -> list[str]:
        """The hash of every stored token, sorted, found with SCAN (never KEYS, which blocks Redis)."""
        prefix = "".join("\\" + c if c in "*?[]\\" else c for c in self.key_prefix)
        found: set[str] = set()
        with _store_errors():
            async for key in self.client.scan_iter(match=prefix + "{*}:m", count=count):
                token_hash = self.hash_of_key(key)
                # SCAN may return a key twice, and the pattern's `*` could span a `}`.
                if token_hash is not None and self.keys(token_hash)[0] == key:
                    found.add(token_hash)
        return sorted(found)
