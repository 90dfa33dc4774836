"""A token's keys while their Redis Cluster slot is being migrated from one primary to another.

A resharding moves a slot key by key: the slot is MIGRATING on its primary (the source) and
IMPORTING on the other (the target) until the last key moved, and a resharding that stopped
half-way stays so until someone finishes it. Meanwhile Redis (verified on 7.0) treats a command
by how many of its keys the node holds:

- on the source, a command runs if all its keys are there; if some are missing (moved, or never
  created: a token with IPs and no domains has no `:d`) it is answered TRYAGAIN, if all are,
  ASK <target>;
- on the target, after ASKING, it runs only if all its keys are there (else TRYAGAIN); a
  single-key command runs after ASKING whether its key is there or not (missing: empty);
- a script runs with its caller's ASKING, and each key it touches, declared or not, is checked
  again as a single-key command: on the source a missing one fails the script then and there,
  after what it wrote so far ("non local key", which `redis.pcall` catches) -- also a key the
  script itself just deleted; on the target after ASKING it reads as empty, even while it is
  still on the source.

So `lua/read.lua` and `lua/write.lua`, which declare a token's 3 or 4 keys, are answered TRYAGAIN
for most tokens of the slot for as long as the migration lasts (waiting cannot help), and a write
that empties or replaces a set on the source would stop half-way. Here:

- every command goes to the slot's primary first, follows MOVED, and follows ASK with ASKING sent
  on the same connection in the same write: redis-py sends ASKING as a command of its own, which
  a pool with several idle connections to the target puts on another connection than the
  command, so the command is redirected again and again until redis-py gives up ("TTL
  exhausted");
- `read` runs the read script where all three keys are; if none is left on the source it runs
  it on the target declaring the meta key only; if they are split, `read_by_key` reads the
  record with single-key commands, each served where its key is, and keeps it only if the record
  did not change meanwhile;
- `write` runs the write script, which writes nothing on a migrating source (it answers
  "moving"); then the token's keys still on the source are moved to the target (MIGRATE, as the
  resharding itself does) and the script runs there after ASKING, declaring the meta key only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import ScriptTextT

__all__ = ["PROBE_SUFFIX", "read", "read_by_key", "write"]

# Redirections one command may follow: MOVED to a new primary, ASK to the target, MOVED again
# when the migration ended meanwhile. More means a layout in flux: the store is failing.
_HOPS = 5
# New connections one command may take after its connection was closed under it.
_RECONNECTS = 2
# Writes that found the token's keys moving again, and key-by-key reads of a record that changed
# under them (more of those while the store's timeout lasts, up to _MAX_READS): then this token's
# store is failing (StoreUnavailable), for the breaker to handle.
_ATTEMPTS = 3
_MAX_READS = 50
# The reply of `lua/write.lua` on a migration's source, or when, declaring the meta key only, it
# finds a token key on another node: nothing written.
_MOVING = ["moving"]
# A key in a token's slot that never exists, whose absence on a migrating source makes the
# source answer ASK with the target's address (`lua/write.lua` names it the same way).
PROBE_SUFFIX = "migrating?"


class _Nodes:
    """The client's nodes by address, and nodes it does not know, made for one call: a new
    primary importing its first slot is in no CLUSTER SLOTS reply, so redis-py has no pool for it."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self._made: dict[tuple[str, int], ClusterNode] = {}

    def owner(self, key: str) -> ClusterNode:
        """The primary of `key`'s slot as redis-py knows it."""
        try:
            node = self.client.get_node_from_key(key)
        except RedisClusterException as error:  # not a RedisError: the store's callers expect one
            raise ClusterError(str(error)) from error
        if node is None:
            raise ClusterError(f"no node serves the slot of {key!r}")
        return node

    def at(self, host: str, port: int) -> ClusterNode:
        node = self.client.get_node(host=host, port=port)
        if node is None:
            node = self._made.get((host, port))
            if node is None:
                node = ClusterNode(host, port, **self.client.nodes_manager.connection_kwargs)
                self._made[host, port] = node
        return node

    async def moved(self, error: MovedError) -> ClusterNode:
        # Tell redis-py (which does the same on its own MOVED), so that the next call starts there.
        learn = getattr(self.client.nodes_manager, "move_slot", None)
        if learn is not None:
            with contextlib.suppress(RedisError, RedisClusterException, LookupError):
                await learn(error)
        return self.at(error.host, error.port)

    async def aclose(self) -> None:
        for node in self._made.values():
            with contextlib.suppress(RedisError, OSError):
                await node.disconnect()


async def _on(node: ClusterNode, args: Sequence[Any], *, asking: bool = False) -> Any:
    """One command on one node; `asking`: after ASKING, on the same connection."""
    commands = [PipelineCommand(0, "ASKING"), PipelineCommand(1, *args)] if asking else None
    for attempt in range(1 + _RECONNECTS):
        try:
            if commands is None:
                return await node.execute_command(*args)
            await node.execute_pipeline(commands)
            for command in commands:
                if isinstance(command.result, Exception):
                    raise command.result
            return commands[1].result
        except (RedisConnectionError, AttributeError):
            # redis-py closes every connection of its client when it refreshes its slot map (every
            # few MOVED replies, which its own ASK handling provokes during a migration), also
            # those in use (then AttributeError in redis-py 8.1: see layout._store_errors), one
            # node after the other. New connections tell that from a node that is down. (Every
            # command sent here may run twice: reads, MIGRATE, and idempotent writes.)
            if attempt == _RECONNECTS:
                raise
    raise AssertionError("unreachable")


async def _run(
    nodes: _Nodes,
    node: ClusterNode,
    args: Sequence[Any],
    *,
    asking: bool = False,
    script: ScriptTextT | None = None,
    asked: Callable[[ClusterNode], None] | None = None,
    follow_ask: bool = True,
) -> Any:
    loaded = False
    for _ in range(_HOPS):
        try:
            return await _on(node, args, asking=asking)
        except MovedError as error:  # before AskError, which it is a kind of
            node, asking = await nodes.moved(error), False
        except AskError as error:
            if not follow_ask:
                raise
            node, asking = nodes.at(error.host, error.port), True
            if asked is not None:
                asked(node)
        except NoScriptError:
            if script is None or loaded:
                raise
            # A restarted (or flushed-scripts) node, or a target that never ran the script.
            await _on(node, ("SCRIPT", "LOAD", script))
            loaded = True
    raise ClusterError(f"{args[0]} redirected more than {_HOPS} times: the cluster layout is changing")


async def read(
    client: RedisCluster, keys: Sequence[str], history_key: str, *, sha: str, script: ScriptTextT
) -> Any:
    """What `lua/read.lua` returns for the token of `keys` (meta, domains, ips), wherever they are.

    On a migrating slot's source, the script runs if the three keys are there (one snapshot); if
    none is (ASK), none will be there again (see `read_by_key`), so the target holds the whole
    record and the script runs there after ASKING, declaring the meta key only (a set it lacks
    does not exist): one snapshot again. Keys split between the nodes, or some there and some
    never created (TRYAGAIN): `read_by_key`.
    """
    await client.initialize()
    nodes = _Nodes(client)
    try:
        try:
            return await _run(
                nodes, nodes.owner(keys[0]), ("EVALSHA", sha, 3, *keys), script=script, follow_ask=False
            )
        except TryAgainError:
            return await _read_by_key(nodes, keys, history_key)
        except AskError as error:  # not MOVED: `_run` follows those
            target = nodes.at(error.host, error.port)
            return await _run(nodes, target, ("EVALSHA", sha, 1, keys[0]), asking=True, script=script)
    finally:
        await nodes.aclose()


async def read_by_key(client: RedisCluster, keys: Sequence[str], history_key: str) -> list[Any] | None:
    """What `lua/read.lua` returns for the token of `keys` (meta, domains, ips), read with
    single-key commands, for a slot in migration.

    Why this is a consistent record: a key is on one node at a time (MIGRATE copies it, then
    deletes it from the source, which serves it until then), and once missing from the source
    it is never created there again while the slot migrates (the source answers ASK for it), so
    each command below reads the key's one current value. The reads are not one snapshot: a write
    may land between two of them, and a mix could be more permissive than the record ever was
    (the old IP list with the new switches, say: a domain restriction turned off in the same
    change that narrowed the IP list). But every change `lua/write.lua` makes to a token's lists
    or switches increments `v` in the meta hash and pushes a history entry in the same atomic
    step, and a write that changes nothing writes nothing. So when the meta hash has the same
    `v`, and the history the same newest entry, before the sets are read and after, nothing was
    written in between, and the sets and the meta hash are the record as it was at one instant.
    `v` alone could come back to the same value if the token was deleted and re-created within
    the reads (a delete leaves nothing, `v` starts again from 0); the newest history entry
    carries the server time in ms and what changed, so a re-created record is told apart unless
    its delete and every re-creating write fell in the millisecond of the old record's last
    change with the same content. A record that changed is read again: 3 times, or more while
    the store's timeout lasts (a record written every millisecond or so needs that), then
    `ClusterError` (the caller fails closed).
    """
    await client.initialize()
    nodes = _Nodes(client)
    try:
        return await _read_by_key(nodes, keys, history_key)
    finally:
        await nodes.aclose()


async def _read_by_key(nodes: _Nodes, keys: Sequence[str], history_key: str) -> list[Any] | None:
    meta_key, domains_key, ips_key = keys
    # Keys the source said it does not hold, and the target it named: they will not be on the
    # source again (see above), so they are read from the target at once (after ASKING).
    targets: dict[str, ClusterNode] = {}

    async def one(*args: Any) -> Any:
        key = args[1]
        target = targets.get(key)
        if target is not None:
            return await _run(nodes, target, args, asking=True)
        return await _run(nodes, nodes.owner(key), args, asked=lambda node: targets.__setitem__(key, node))

    deadline = time.monotonic() + (nodes.client.nodes_manager.connection_kwargs.get("socket_timeout") or 0)
    for attempt in range(_MAX_READS):
        if attempt >= _ATTEMPTS and time.monotonic() > deadline:
            break
        newest = await one("LINDEX", history_key, 0)
        meta = _pairs(await one("HGETALL", meta_key))
        if not meta:
            return None  # as read.lua: no meta hash, an unknown token, whatever else is there
        domains = list(await one("SMEMBERS", domains_key))
        ips = list(await one("SMEMBERS", ips_key))
        version = await one("HGET", meta_key, "v")
        if version == dict(zip(meta[::2], meta[1::2], strict=False)).get("v") and newest == await one(
            "LINDEX", history_key, 0
        ):
            return [meta, domains, ips]
    raise ClusterError("the token's record kept changing while it was read during a slot migration")


def _pairs(reply: Any) -> list[Any]:
    # redis-py turns HGETALL's flat list into a dict; read.lua returns the flat list.
    if isinstance(reply, dict):
        return [item for pair in reply.items() for item in pair]
    return list(reply)


async def write(
    client: RedisCluster, keys: Sequence[str], argv: Sequence[Any], *, sha: str, script: ScriptTextT
) -> Any:
    """Run `lua/write.lua` on the token of `keys` (meta, domains, ips, history), wherever its slot
    is: the reply of the script.

    First as always, declaring the four keys: it runs on a node that holds them all, unless that
    is a migration's source, where it writes nothing and answers "moving" (see `lua/write.lua`:
    a change there could stop half-way); Redis refuses it with TRYAGAIN while they are split or
    some are missing. Then the keys still on the source are moved to the target (MIGRATE, as the
    resharding would), and the script runs on the target after ASKING, declaring the meta key
    only. That is sound because the token then has no key left on the source and cannot get one
    there (see `read_by_key`): the target holds the whole record, and the keys it lacks do not
    exist. Declaring the four keys there would be refused for any that does not exist, and that
    is most tokens (no `:d`, or no `:i`). The script looks for every key before it writes any,
    so one found elsewhere after all (a layout changing again) makes it write nothing and answer
    "moving": then everything is tried again, at most 3 times, then `ClusterError`. The entry
    limit and the history are the script's, wherever it runs.
    """
    await client.initialize()
    nodes = _Nodes(client)
    meta_key = keys[0]
    try:
        for _ in range(_ATTEMPTS):
            try:
                reply = await _run(
                    nodes,
                    nodes.owner(meta_key),
                    ("EVALSHA", sha, len(keys), *keys, *argv),
                    script=script,
                    follow_ask=False,
                )
            except AskError as error:  # not MOVED: `_run` follows those
                # None of the four keys is on the source: nothing to move.
                reply = await _on_target(
                    nodes, (error.host, error.port), keys[0], argv, sha=sha, script=script
                )
            except TryAgainError:
                reply = _MOVING
            if reply == _MOVING:
                reply = await _move_and_write(nodes, keys, argv, sha=sha, script=script)
            if reply is not None and reply != _MOVING:
                return reply
        raise ClusterError("the token's keys kept moving while it was written during a slot migration")
    finally:
        await nodes.aclose()


async def _move_and_write(
    nodes: _Nodes, keys: Sequence[str], argv: Sequence[Any], *, sha: str, script: ScriptTextT
) -> Any:
    """The write on the migration's target, once the token's keys are all there; None when the
    slot turned out not to be migrating (any more): to be tried again from the start."""
    source, target = await _ends(nodes, keys)
    if target is None:
        return None
    host, port = target
    options = nodes.client.nodes_manager.connection_kwargs
    auth: list[str] = []
    if options.get("password"):
        auth = (
            ["AUTH2", options["username"], options["password"]]
            if options.get("username")
            else ["AUTH", options["password"]]
        )
    # MIGRATE's timeout (ms) is how long the source waits for the target: the store's timeout.
    timeout_ms = max(1, int(1000 * (options.get("socket_timeout") or 1.0)))
    try:
        # "NOKEY" when none is left on the source (moved by the resharding, or another writer).
        await _on(source, ("MIGRATE", host, port, "", 0, timeout_ms, *auth, "KEYS", *keys))
    except AskError:  # MOVED: the migration ended meanwhile; start again
        return None
    return await _on_target(nodes, target, keys[0], argv, sha=sha, script=script)


async def _on_target(
    nodes: _Nodes,
    target: tuple[str, int],
    meta_key: str,
    argv: Sequence[Any],
    *,
    sha: str,
    script: ScriptTextT,
) -> Any:
    """The write script on a migration's target after ASKING, declaring the meta key only: for
    when none of the token's keys is left on the source. None: to be tried again from the start."""
    node = nodes.at(*target)
    try:
        return await _on(node, ("EVALSHA", sha, 1, meta_key, *argv), asking=True)
    except NoScriptError:
        await _on(node, ("SCRIPT", "LOAD", script))
        return await _on(node, ("EVALSHA", sha, 1, meta_key, *argv), asking=True)
    except AskError:  # MOVED too: the migration was undone meanwhile
        return None


async def _ends(nodes: _Nodes, keys: Sequence[str]) -> tuple[ClusterNode, tuple[str, int] | None]:
    """The slot's primary (the migration's source) and the address of the migration's target, as
    the source names it when asked for a key that never exists (named as `lua/write.lua` names its
    own probe); None if the slot is not migrating."""
    source = nodes.owner(keys[0])
    for _ in range(_HOPS):
        try:
            await _on(source, ("EXISTS", keys[0][:-1] + PROBE_SUFFIX))
        except MovedError as error:
            source = await nodes.moved(error)
        except AskError as error:
            return source, (error.host, error.port)
        else:
            return source, None
    raise ClusterError(f"EXISTS redirected more than {_HOPS} times: the cluster layout is changing")
