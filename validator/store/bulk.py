"""The admin's bulk commands on the store, as functions over its client and key layout: history
(one token's, and every token's merged in time order), pipelined script calls and reads (import,
export, restore), and the SCAN of every stored token. `Store` calls them."""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from validator.model import Restrictions
from validator.store.layout import KeyLayout, _restrictions, _store_errors


class _At(msgspec.Struct):
    """The one field of a history entry that the time-ordered merge reads."""

    at: int


def _at(raw: object) -> int | None:
    """When a history entry was recorded (ms), or None for one that cannot be read (or none:
    an empty list, a key of another type)."""
    if not isinstance(raw, (str, bytes)):
        return None
    try:
        return msgspec.json.decode(raw, type=_At).at
    except msgspec.DecodeError:  # ValidationError included
        return None


async def history(client: Any, key: str, count: int) -> list[str]:
    """The `count` most recent entries (JSON text) of the history at `key`, newest first."""
    with _store_errors():
        entries = await client.lrange(key, 0, count - 1)
    return [entry if isinstance(entry, str) else entry.decode() for entry in entries]


async def history_since(
    client: Any, layout: KeyLayout, since_ms: int = 0, *, batch: int = 500, page: int = 16
) -> AsyncIterator[tuple[str, int, str]]:
    """Every token's history entries recorded at or after `since_ms`, as (token hash, at,
    entry JSON), oldest first across all tokens (entries of the same millisecond in hash
    order). Entries that cannot be read are left out.

    The history keys are found with SCAN (every primary on a Redis Cluster) and merged by
    time: memory holds one small tuple per token with entries since `since_ms`, and at most
    `batch` * `page` entries. Each token's history is read from its oldest end, `page`
    entries at a time, for `batch` tokens per pipelined round trip. Not a snapshot: a change
    recorded while this runs may be left out, or shift a token's reading by an entry.
    """
    heap: list[tuple[int, str, int]] = []  # (no entry left is older, token hash, entries read)
    async for hashes in _history_hashes(client, layout, batch):
        ends = await _pipelined(client, [("LINDEX", layout.history(h), n) for h in hashes for n in (0, -1)])
        for n, token_hash in enumerate(hashes):
            if not isinstance(ends[2 * n], (str, bytes)):
                continue  # gone since the SCAN, or a key of another type: no history
            newest, oldest = _at(ends[2 * n]), _at(ends[2 * n + 1])
            if newest is None or newest >= since_ms:
                heap.append((max(oldest or since_ms, since_ms), token_hash, 0))
    heapq.heapify(heap)
    while heap:
        group = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
        pages = await _pipelined(
            client, [("LRANGE", layout.history(h), -(taken + page), -(taken + 1)) for _, h, taken in group]
        )
        # What may be given out this round: no entry not yet read is older than `limit`.
        limit = heap[0][0] if heap else None
        read: list[tuple[str, int, list[tuple[int | None, str]], int | None]] = []
        for (_, token_hash, taken), reply in zip(group, pages, strict=True):
            if not isinstance(reply, list):
                continue  # a key of another type: not history
            texts = [raw if isinstance(raw, str) else raw.decode(errors="replace") for raw in reversed(reply)]
            entries = [(_at(text), text) for text in texts]
            # A full page: more may follow, none older than the newest read.
            more = max((at for at, _ in entries if at is not None), default=since_ms)
            if len(reply) == page:
                limit = more if limit is None else min(limit, more)
            read.append((token_hash, taken, entries, more if len(reply) == page else None))
        ready: list[tuple[int, str, int, str]] = []
        for token_hash, taken, entries, following in read:
            for done, (at, text) in enumerate(entries):
                if at is not None and limit is not None and at > limit:
                    heapq.heappush(heap, (at, token_hash, taken + done))
                    break
                if at is not None and at >= since_ms:
                    ready.append((at, token_hash, taken + done, text))
            else:
                if following is not None:
                    heapq.heappush(heap, (following, token_hash, taken + len(entries)))
        ready.sort(key=lambda item: item[:3])
        for at, token_hash, _, raw in ready:
            yield token_hash, at, raw


async def _history_hashes(client: Any, layout: KeyLayout, batch: int) -> AsyncIterator[list[str]]:
    """The hashes of the tokens that have a history key, `batch` at a time (SCAN)."""
    hashes: list[str] = []
    seen: set[str] = set()
    with _store_errors():
        async for key in client.scan_iter(match=layout.scan_pattern("h"), count=1000):
            name = key if isinstance(key, str) else key.decode()
            token_hash = layout.hash_of_key(name)
            # SCAN may return a key twice, and the pattern's `*` could span a `}`.
            if token_hash is None or layout.history(token_hash) != name or token_hash in seen:
                continue
            seen.add(token_hash)
            hashes.append(token_hash)
            if len(hashes) == batch:
                yield hashes
                hashes = []
    if hashes:
        yield hashes


async def _pipelined(client: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run plain commands in one pipeline (one round trip per node on a cluster); a command
    refused by Redis (WRONGTYPE) comes back as its error, anything else raises."""
    with _store_errors():
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and not (
                isinstance(reply, ResponseError) and str(reply).startswith("WRONGTYPE")
            ):
                raise reply
    return replies


async def read_many(
    client: Any, read: AsyncScript, layout: KeyLayout, token_hashes: Sequence[str]
) -> list[Restrictions | None]:
    """Many tokens' restrictions (`read`: `lua/read.lua`), pipelined in one round trip; None for
    an unknown token."""
    with _store_errors():
        replies = await evalsha_many(
            client, read, [(layout.record(token_hash), ()) for token_hash in token_hashes]
        )
    return [None if reply is None else _restrictions(*reply) for reply in replies]


async def evalsha_many(
    client: Any, script: AsyncScript, calls: Sequence[tuple[Sequence[str], Sequence[str | int]]]
) -> list[Any]:
    """Run `script` once per (keys, args) in one pipeline: one round trip per node on a
    cluster (redis-py's ClusterPipeline groups the calls by node)."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
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
        await client.script_load(script.script)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def scan_hashes(client: Any, layout: KeyLayout, count: int = 1000) -> list[str]:
    """The hash of every stored token, sorted, found with SCAN (never KEYS, which blocks Redis)."""
    found: set[str] = set()
    with _store_errors():
        async for key in client.scan_iter(match=layout.scan_pattern("m"), count=count):
            token_hash = layout.hash_of_key(key)
            # SCAN may return a key twice, and the pattern's `*` could span a `}`.
            if token_hash is not None and layout.record(token_hash)[0] == key:
                found.add(token_hash)
    return sorted(found)
