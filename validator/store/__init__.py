"""The Redis layout of docs/behaviour.md and the commands on it.

Per token, under one hash tag (so one Redis Cluster slot, one round trip):

    {prefix}{<h>}:m   HASH  d, i = switches ("0"/"1"), v = version (grows with every change)
    {prefix}{<h>}:d   SET   normalised domain entries
    {prefix}{<h>}:i   SET   normalised IP entries

`<h>` is a keyed hash (HMAC-SHA256, truncated to 128 bits, base64url) of the token, so neither
keys nor values hold a token in clear. A cache miss reads on a multiplexed connection in a
MULTI/EXEC transaction (`Store._read_transaction`); redis-py's reads (where there is no such
connection, or after a redirection) and every write are the Lua scripts shipped in `lua/`.

The same layout serves one server (`redis://`), a Sentinel-managed master (`redis+sentinel://`)
and a Redis Cluster (`redis+cluster://`): every command names one token's keys only, so it runs
on the one node that holds the token's slot.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Unpack
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterError, ReadOnlyError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from validator.errors import (
    ConfigurationError,
    InvalidEntry,
    LimitExceeded,
    StoreNotInitialised,
    StoreUnavailable,
)
from validator.model import Restrictions
from validator.store import bulk
from validator.store import cluster as _cluster
from validator.store import marker as _marker
from validator.store import memory as _memory  # noqa: F401  (registers memory://)
from validator.store import migration as _migration
from validator.store.backends import BACKENDS
from validator.store.denial_refs import DenialRef, DenialRefs
from validator.store.denial_streams import REF_WINDOW_MS, DenialEntry, DenialStreams, FoundDenials
from validator.store.invalidation import Topology
from validator.store.layout import (
    _LIST_CODES,
    _LIST_NAMES,
    DEFAULT_KEY_PREFIX,
    Expiry,
    KeyLayout,
    Kind,
    List,
    ListChange,
    UnreadableRecord,
    _restrictions,
    _script,
    _store_errors,
    common_record,
    fingerprint,
    parse_read,
    put_args,
    put_options,
    wrong_type,
)
from validator.store.marker import Marker
from validator.store.options import WRITE_RETRY, StoreOptions, checked_store_options
from validator.store.wire import Multiplexer, WireError, Wires

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "Expiry",
    "Kind",
    "List",
    "ListChange",
    "Store",
    "StoreOptions",
    "UnreadableRecord",
    "common_record",
    "fingerprint",
    "parse_read",
    "wrong_type",
]

log = logging.getLogger("validator")

# `Store._read_transaction`: the three keys of a token share their length (base + one letter).
_READ_TRANSACTION = (
    b"*1\r\n$5\r\nMULTI\r\n"
    b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%bm\r\n"
    b"*2\r\n$8\r\nSMEMBERS\r\n$%d\r\n%bd\r\n"
    b"*2\r\n$8\r\nSMEMBERS\r\n$%d\r\n%bi\r\n"
    b"*1\r\n$4\r\nEXEC\r\n"
)

# The pause before a write's first retry (`write_retry`), and at most between two.
_RETRY_FIRST = 0.02
# How long closing waits for a Cluster slot-map read under way (`ClusterTopology.initialize`).
_INITIALIZE_WAIT = 0.15
_RETRY_MAX = 0.1

# Error replies of a node that is no longer (or not yet) the one taking the write.
_FAILOVER_REPLIES = ("READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "LOADING", "MOVED", "ASK")


def _failing_over(error: StoreUnavailable) -> bool:
    """Whether a write failed as it does during a failover, so is worth trying again."""
    cause = error.__cause__
    # Connection errors include redis-py's MasterNotFoundError (Sentinel) and BusyLoadingError;
    # ClusterError its ClusterDownError and MasterDownError; ReadOnlyError is a demoted master.
    if isinstance(
        cause, (RedisConnectionError, RedisTimeoutError, OSError, ClusterError, ReadOnlyError, TryAgainError)
    ):
        return True
    if isinstance(cause, RedisError):
        return str(cause).startswith(_FAILOVER_REPLIES)
    return isinstance(cause, RuntimeError)  # a connection closed under the command


# Used only when no secret is configured: keys are then still hashes, but anyone who knows this
# constant can test a guessed token against them. Configure `secret` (or VALIDATOR_SECRET).
_DEFAULT_SECRET = b"token-access-validator/unset-secret"


def _secret_bytes(secret: str | bytes | None, url_scheme: str) -> bytes:
    if secret is None:
        secret = os.environ.get("VALIDATOR_SECRET")
    if secret is None or secret == "":
        if url_scheme != "memory":
            log.warning(
                "no token secret configured (secret= or VALIDATOR_SECRET): Redis keys are "
                "hashes under a public default key; set a secret for production"
            )
        return _DEFAULT_SECRET
    return secret.encode() if isinstance(secret, str) else secret


# `Store.token_hash`: base64 to base64url.
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_b2a = binascii.b2a_base64


def _hmac_pads(secret: bytes) -> tuple[Any, Any]:
    """The SHA-256 states after the inner and the outer padded key of HMAC (RFC 2104, as the
    `hmac` module pads): an HMAC is then two copies, two updates and two digests."""
    block = hashlib.sha256().block_size
    key = hashlib.sha256(secret).digest() if len(secret) > block else secret
    key = key.ljust(block, b"\0")
    return hashlib.sha256(key.translate(hmac.trans_36)), hashlib.sha256(key.translate(hmac.trans_5C))


class Store:
    """Restrictions in Redis (or the in-process `memory://` store), chosen by URL."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        secret: bytes,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        limit: int = 5,
        write_retry: float = WRITE_RETRY,
        url: str = "",
        topology: Topology | None = None,
        local_listeners: list[Callable[[str], None]] | None = None,
        wires: Wires | None = None,
    ) -> None:
        if limit < 1:
            raise ConfigurationError(f"limit must be at least 1, not {limit}")
        if "{" in key_prefix or "}" in key_prefix:
            raise ConfigurationError("key_prefix must not contain '{' or '}' (they form the hash tag)")
        self.client = client
        self.key_prefix = key_prefix
        self.layout = KeyLayout(key_prefix)
        self.limit = limit
        self.url = url
        # Options every `lua/write.lua` call carries (history retention, ...); a call's own
        # options (its actor) go over them.
        self.write_options: dict[str, Any] = {}
        # Seconds for which an admin write that met a failover (the node gone, refusing writes,
        # the cluster reconfiguring) is tried again on the new primary or master: a promotion
        # comes 1-3 s after Redis notices the failure (cluster-node-timeout, down-after).
        self.write_retry = write_retry
        self._hmac = hmac.new(secret, digestmod=hashlib.sha256)
        self._inner, self._outer = _hmac_pads(secret)
        # The Redis nodes whose invalidations keep caches coherent (None: nothing to listen to).
        self.topology = topology
        self._cluster = topology if isinstance(topology, _cluster.ClusterTopology) else None
        # Cache-miss reads go through `wires` (multiplexed connections) when there are some.
        self._wires = wires
        self.local_listeners = [] if local_listeners is None else local_listeners
        self.marker = Marker(
            client,
            key=f"{key_prefix}marker",
            # The marker's value proves the secret too: a validator configured with another secret
            # would see every token as unknown (unrestricted), so it must not take the store as sound.
            value=hmac.new(secret, b"token-access-validator marker", hashlib.sha256).hexdigest()[:16],
            cluster=self._cluster,
            # On a Redis Cluster the marker lives in other slots than a token's keys, out of reach
            # of the write script: writes read it first (see `Marker.require`).
            in_script=not isinstance(client, RedisCluster),
        )
        self._read = client.register_script(_script("read.lua"))
        self._write = client.register_script(_script("write.lua"))
        self.denial_streams = DenialStreams(
            client,
            key_prefix=key_prefix,
            wires=wires,
            secret_mac=self._hmac,
            summary_script=client.register_script(_script("summary.lua")),
        )

    @classmethod
    def from_url(cls, url: str = "memory://", **options: Unpack[StoreOptions]) -> Store:
        """Build a store from a URL, with `StoreOptions` (validator/store/options.py: secret,
        key prefix, limit, timeouts, write retry). Raises `ConfigurationError`.

        - `memory://[name]`: in-process; stores with the same name share data within a process;
        - `redis://`, `rediss://`, `unix://`: one Redis server (redis-py's URL syntax; over TLS
          the options `ssl_cert_reqs`, `ssl_ca_certs`, ... serve both its connections);
        - `redis+cluster://[[user]:password@]host:port[,host:port...]`: a Redis Cluster, found
          from any of the startup nodes; option `max_connections` (per node);
        - `redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name`: the master
          of `service_name` as the sentinels name it; options `db`, `sentinel_username`,
          `sentinel_password` (the URL's credentials serve the sentinels too unless these say
          otherwise);
        - `rediss+cluster://`, `rediss+sentinel://`: the same over TLS; options `ssl_cert_reqs`,
          `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_check_hostname`.
        """
        o = checked_store_options(options, owner="Store.from_url")
        scheme = urlsplit(url).scheme
        key = _secret_bytes(o["secret"], scheme)
        build = BACKENDS.get(scheme)
        if build is None:
            raise ConfigurationError(
                f"unsupported store URL {url!r}: use memory://, redis://, rediss://, unix://, "
                "redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
            )
        common: dict[str, Any] = {
            "secret": key,
            "key_prefix": o["key_prefix"],
            "limit": o["limit"],
            "write_retry": o["write_retry"],
            "url": url,
        }
        return build(cls, url, common, o["timeout"], o["connect_timeout"])

    # -------------------------------------------------------------------------- keys

    def token_hash(self, token: str) -> str:
        """The keyed hash that names a token's keys: HMAC-SHA256 of the token, its first 128 bits
        in unpadded base64url.

        Computed from the two padded-key SHA-256 states (`_hmac_pads`), the HMAC of RFC 2104 as
        `hmac` computes it, without its Python object per call: ~1.2 µs where `hmac.copy()`,
        `base64.urlsafe_b64encode` and `rstrip` took ~2, every miss (benchmarks: miss)."""
        inner = self._inner.copy()
        inner.update(token.encode("utf-8", "surrogatepass"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        # 16 bytes are 24 base64 characters, the last two padding.
        return _b2a(outer.digest()[:16], newline=False)[:22].translate(_URLSAFE).decode("ascii")

    def keys(self, token_hash: str) -> tuple[str, str, str]:
        """The meta, domain and IP keys of one token, sharing the hash tag `{token_hash}`."""
        return self.layout.record(token_hash)

    def hash_of_key(self, key: str) -> str | None:
        """The token hash inside one of our keys (as named by an invalidation message)."""
        return self.layout.hash_of_key(key)

    def history_key(self, token_hash: str) -> str:
        """The token's capped change history: a list of JSON entries, newest first (`lua/write.lua`)."""
        return self.layout.history(token_hash)

    # -------------------------------------------------------------------------- the marker

    @property
    def marker_key(self) -> str:
        """The marker's key (on a Redis Cluster, the prefix of its keys)."""
        return self.marker.key

    @property
    def marker_value(self) -> str:
        return self.marker.value

    def is_marker_key(self, key: str) -> bool:
        """Whether `key` is (one of) the store's marker key(s)."""
        return self.marker.is_key(key)

    def not_initialised(self, state: str) -> StoreNotInitialised:
        """The error that refuses a write on a store whose marker is "missing" or "mismatch"."""
        return self.marker.not_initialised(state)

    async def marker_state(
        self, ranges: tuple[tuple[int, int], ...] | None = None
    ) -> Literal["ok", "missing", "mismatch"]:
        """Whether the store carries this deployment's marker (see `Marker.state`)."""
        return await self.marker.state(ranges)

    async def write_marker(self) -> bool:
        """Mark the store as initialised for this secret (see `Marker.write`)."""
        return await self.marker.write()

    async def eviction_risk(self) -> tuple[str | None, str | None]:
        """(problem, doubt) about Redis's eviction policy (see `marker.eviction_risk`)."""
        return await _marker.eviction_risk(self.client, self.url, self._cluster)

    async def log_eviction_risk(self) -> None:
        """Log `eviction_risk`; never raises (see `marker.log_eviction_risk`)."""
        await _marker.log_eviction_risk(self.client, self.url, self._cluster)

    # -------------------------------------------------------------------------- commands

    async def read(self, token_hash: str) -> Restrictions | None:
        """One token's restrictions (one round trip), or None if the token is unknown."""
        wire = self._wires.for_tag(token_hash) if self._wires is not None else None
        try:
            if wire is not None:
                reply = await self._wire_read(wire, token_hash)
            elif isinstance(self.client, RedisCluster):
                reply = await self._cluster_read(self.client, token_hash)
            else:
                with _store_errors():
                    reply = await self._read(keys=self.keys(token_hash))
        except StoreUnavailable as error:
            if wrong_type(error):
                raise UnreadableRecord("a key of another type: WRONGTYPE", token_hash) from error
            raise
        return parse_read(reply)

    def read_now(self, token_hash: str) -> asyncio.Future[Any] | None:
        """Start a read on a multiplexed connection, if it is up: the future of the raw reply
        (for `parse_read`; it fails with `WireError`: see `read_again`), else None (use `read`)."""
        wire = self._wires.for_tag(token_hash) if self._wires is not None else None
        if wire is None:
            return None
        return wire.transaction_now(self._read_transaction(token_hash), 3)

    def read_again(self, token_hash: str, error: BaseException) -> bool:
        """Whether a `read_now` that failed with `error` is for `read` to do again rather than a
        failure: the cluster (or the sentinels) sent the read elsewhere."""
        return self._wires is not None and self._wires.redirected(token_hash, error)

    def _read_transaction(self, token_hash: str) -> bytes:
        """The read of a multiplexed connection: MULTI, HGETALL meta, SMEMBERS domains, SMEMBERS
        ips, EXEC, packed (`wire.pack_transaction` would make the same bytes, in ~4x the time).

        One snapshot, as `lua/read.lua` reads, for a fifth of the Redis CPU: an EVALSHA of the
        script cost ~7.4 µs of redis-server CPU per read, the transaction ~2.7 µs, three plain
        commands ~2.2 µs (Redis 7.0, pipelined; issue 14). The reply is EXEC's: [meta, domains,
        ips], meta empty for an unknown token (`parse_read`)."""
        base = f"{self.key_prefix}{{{token_hash}}}:".encode()
        length = len(base) + 1
        return _READ_TRANSACTION % (length, base, length, base, length, base)

    async def _wire_read(self, wire: Multiplexer, token_hash: str) -> Any:
        keys = self.keys(token_hash)
        try:
            return await wire.transaction(self._read_transaction(token_hash), 3)
        except WireError as error:
            if self._wires is None or not self._wires.redirected(token_hash, error):
                raise StoreUnavailable(f"restriction store unavailable: {error}") from error
            redirection = str(error)
        if isinstance(self.client, RedisCluster) and redirection.startswith("TRYAGAIN"):
            # The slot is migrating and the token's keys are split between the two nodes, or
            # some do not exist: no multi-key read will run until the migration ends.
            with _store_errors():
                return await _migration.read_by_key(self.client, keys, self.history_key(token_hash))
        if isinstance(self.client, RedisCluster) and redirection.startswith("ASK "):
            # The slot is migrating and none of the token's keys is left on the source.
            return await self._cluster_read(self.client, token_hash)
        # A Redis Cluster moved the slot or lost the node: redis-py follows it.
        with _store_errors():
            return await self._read(keys=keys)

    async def _cluster_read(self, client: RedisCluster, token_hash: str) -> Any:
        """`lua/read.lua` on a Redis Cluster without a multiplexed connection to use: where the
        token's keys are, and key by key while they are split by a slot migration."""
        keys = self.keys(token_hash)
        with _store_errors():
            try:
                return await _migration.read(
                    client, keys, self.history_key(token_hash), sha=self._read.sha, script=self._read.script
                )
            except RedisConnectionError:
                # A primary gone (a failover): redis-py finds the new one.
                return await self._read(keys=keys)

    async def write(
        self, token_hash: str, op: str, *args: str, options: Mapping[str, Any] | None = None
    ) -> tuple[Restrictions | None, bool]:
        """Run one atomic change (see `lua/write.lua`); returns the stored state and whether it
        changed. The state is None when the token has no record and the change only takes
        away (remove, clear, disable, mode): such a change creates nothing. `options` (the
        script's options: "actor", ...) go over `write_options`.

        Raises `StoreNotInitialised` or `LimitExceeded` (nothing written), or `StoreUnavailable`.
        """
        # One id for every try of this change (see `lua/write.lua`: a try whose outcome was lost
        # is not applied twice).
        once = {**(options or {}), "op_id": uuid.uuid4().hex}
        deadline = time.monotonic() + self.write_retry
        delay = _RETRY_FIRST
        while True:
            try:
                await self.marker.require(token_hash)
                keys, argv = self._write_call(token_hash, op, args, options=once)
                with _store_errors():
                    if isinstance(self.client, RedisCluster):
                        reply = await self._cluster_write(self.client, keys, argv)
                    else:
                        reply = await self._write(keys=keys, args=argv)
                break
            except StoreUnavailable as error:
                # A failover (or a primary restarting): the node is gone, refuses writes, or the
                # cluster is reconfiguring. Tried again on the new primary or master, found by
                # asking the cluster or the sentinels again, until `write_retry` has passed.
                if not _failing_over(error) or time.monotonic() + delay > deadline:
                    raise
                log.debug("admin write: %s; trying again", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                await self._follow_failover()
        result = self._write_result(reply)
        if result[1]:
            self._notify(token_hash)
        return result

    async def put(self, token_hash: str, record: Restrictions) -> tuple[Restrictions | None, bool]:
        """Store a whole record (its lists and their expiries as given), through `write`."""
        return await self.write(token_hash, *put_args(record), options=put_options(record))

    async def put_many(
        self, records: Sequence[tuple[str, Restrictions]], *, marked: bool = True
    ) -> list[tuple[Restrictions | None, bool] | LimitExceeded]:
        """Store whole records `(token_hash, record)` pipelined in one round trip (see `write_many`)."""
        return await self.write_many(
            [(token_hash, put_args(record)) for token_hash, record in records],
            marked=marked,
            each_options=[put_options(record) for _, record in records],
        )

    async def change_entries(
        self,
        token_hash: str,
        change: ListChange,
        kind: Kind,
        entries: Sequence[str],
        *,
        expiry: Expiry | None = None,
    ) -> tuple[Restrictions | None, bool]:
        """Add, remove or replace (`set`) stored entries of one list, through `write`; `expiry`:
        when the added or set entries stop matching (None: never)."""
        options = None if expiry is None else expiry.options()
        return await self.write(token_hash, change, _LIST_CODES[kind], *entries, options=options)

    async def switch(self, token_hash: str, kind: Kind, on: bool) -> tuple[Restrictions | None, bool]:
        """Switch one restriction on or off, through `write`."""
        return await self.write(token_hash, "switch", _LIST_CODES[kind], "1" if on else "0")

    async def set_mode(self, token_hash: str, mode: str) -> tuple[Restrictions | None, bool]:
        """Set the token's mode (`enforce` or `report`), through `write`."""
        return await self.write(token_hash, "mode", mode)

    async def delete_record(self, token_hash: str) -> bool:
        """Remove the token's record; True if there was one."""
        _, changed = await self.write(token_hash, "delete")
        return changed

    async def _cluster_write(
        self, client: RedisCluster, keys: Sequence[str], argv: Sequence[str | int]
    ) -> Any:
        """`lua/write.lua` on a Redis Cluster, also while the token's slot is being migrated (see
        `migration.write`)."""
        try:
            return await _migration.write(client, keys, argv, sha=self._write.sha, script=self._write.script)
        except RedisConnectionError:
            # A primary gone (a failover): redis-py finds the new one. A write that did run before
            # the connection broke changes nothing the second time (every op is idempotent).
            return await self._write(keys=keys, args=argv)

    async def _follow_failover(self) -> None:
        """Look for the store's current primaries (or master) before a write is tried again."""
        if self._cluster is not None:
            # Makes redis-py's client read the slot map now when it changed (a promotion).
            with contextlib.suppress(RedisError, OSError):
                await self._cluster.discover()
            await self._cluster.refresh_client()

    def _notify(self, token_hash: str) -> None:
        for listener in self.local_listeners:
            listener(token_hash)

    async def touch(self, key: str) -> None:
        """Write and remove a throwaway key (its invalidations serve as a barrier)."""
        with _store_errors():
            await self.client.set(key, "1", px=10_000)
            await self.client.delete(key)

    async def shard_tags(self, nodes: Mapping[str, Hashable]) -> list[str]:
        """One hash tag per write node of `nodes` (as the invalidation listener subscribed them),
        so that a key suffixed with it lands on that node: just `""` unless on a Redis Cluster."""
        if self._cluster is None:
            return [""]
        await asyncio.to_thread(_cluster.slot_tags)  # computed once, off the event loop
        return self._cluster.tags(nodes)

    async def ping(self) -> None:
        with _store_errors():
            await self.client.ping()

    def reopen(self) -> None:
        """Undo `close` (redis-py's clients reconnect by themselves; the read wires are told)."""
        if self._wires is not None:
            self._wires.reopen()

    async def close(self) -> None:
        if self._wires is not None:
            self._wires.close()
        if self._cluster is not None:
            # A slot-map read under way would open connections after they were closed: its end
            # first (bounded by the connect timeouts), and if it is not over by then, close
            # again after it.
            initializing = self._cluster.initializing()
            if initializing:
                _, late = await asyncio.wait(initializing, timeout=_INITIALIZE_WAIT)
                if late:
                    closing = asyncio.gather(*late, return_exceptions=True)
                    closing.add_done_callback(lambda _: asyncio.ensure_future(self._close_client()))
        await self._close_client()
        if self.topology is not None:
            await self.topology.aclose()

    async def _close_client(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
            if isinstance(self.client, RedisCluster):
                # redis-py's aclose() does nothing while a slot-map refresh is pending (after a
                # connection error), which would leave every node's connections open.
                await self.client.nodes_manager.aclose()
                await self.client.nodes_manager.aclose("startup_nodes")

    # -------------------------------------------------------------------------- the denial log

    UNKNOWN_SHARD_TAGS = DenialStreams.UNKNOWN_SHARD_TAGS

    def denials_key(self, token_hash: str) -> str:
        """The stored token's stream of recent denials (see `DenialStreams.denials_key`)."""
        return self.denial_streams.denials_key(token_hash)

    def unknown_denials_key(self, token_hash: str) -> str:
        """The shard of the unknown-token log that holds `token_hash`'s denials."""
        return self.denial_streams.unknown_denials_key(token_hash)

    def unknown_denials_keys(self) -> list[str]:
        """Every shard of the unknown-token log."""
        return self.denial_streams.unknown_denials_keys()

    def denial_summary_key(self, token_hash: str) -> str:
        """The stored token's bounded denial summary (`summary.lua`)."""
        return self.denial_streams.denial_summary_key(token_hash)

    async def append_denials(
        self,
        stored: Sequence[DenialEntry],
        unknown: Sequence[DenialEntry] = (),
        *,
        max_length: int,
        unknown_length: int,
        ttl: float,
    ) -> int:
        """Append denial-log entries (see `DenialStreams.append_denials`)."""
        return await self.denial_streams.append_denials(
            stored, unknown, max_length=max_length, unknown_length=unknown_length, ttl=ttl
        )

    async def denial_summary(
        self, token_hash: str
    ) -> tuple[list[dict[str, str]], dict[str, tuple[int, int]]] | None:
        """The token's denial summary (see `DenialStreams.denial_summary`)."""
        return await self.denial_streams.denial_summary(token_hash)

    async def denials(
        self, token_hash: str, *, since_ms: int = 0, count: int = 100, own: bool = True
    ) -> list[dict[str, str]]:
        """The token's recent denials, newest first (see `DenialStreams.denials`)."""
        return await self.denial_streams.denials(token_hash, since_ms=since_ms, count=count, own=own)

    async def unknown_denials(self, *, since_ms: int = 0, count: int = 100) -> list[dict[str, str]]:
        """Recent denials of tokens without a record, newest first."""
        return await self.denial_streams.unknown_denials(since_ms=since_ms, count=count)

    async def delete_denials(self, token_hash: str) -> None:
        """Remove the token's denial stream and summary."""
        await self.denial_streams.delete_denials(token_hash)

    @property
    def denial_refs(self) -> DenialRefs:
        """The cipher of `Access-Denied-Ref` values (see `DenialStreams.denial_refs`)."""
        return self.denial_streams.denial_refs

    async def find_denial(self, ref: DenialRef, *, window_ms: int = REF_WINDOW_MS) -> FoundDenials:
        """The denial-log entries a LOGGED reference names (see `DenialStreams.find_denial`)."""
        return await self.denial_streams.find_denial(ref, window_ms=window_ms)

    async def hashes_starting(self, fingerprint_: str, count: int = 1000) -> list[str]:
        """The stored tokens' hashes that start with `fingerprint_` (SCAN)."""
        return await self.denial_streams.hashes_starting(fingerprint_, count)

    # -------------------------------------------------------------------------- admin: history, bulk

    async def history(self, token_hash: str, count: int = 50) -> list[str]:
        """The token's `count` most recent history entries (JSON text), newest first."""
        return await bulk.history(self.client, self.history_key(token_hash), count)

    def history_since(
        self, since_ms: int = 0, *, batch: int = 500, page: int = 16
    ) -> AsyncIterator[tuple[str, int, str]]:
        """Every token's history entries recorded at or after `since_ms`, as (token hash, at,
        entry JSON), oldest first across all tokens (see `bulk.history_since`)."""
        return bulk.history_since(self.client, self.layout, since_ms, batch=batch, page=page)

    async def read_many(self, token_hashes: Sequence[str]) -> list[Restrictions | None]:
        """Many tokens' restrictions, pipelined in one round trip; None for an unknown token."""
        return await bulk.read_many(self.client, self._read, self.layout, token_hashes)

    async def scan_hashes(self, count: int = 1000) -> list[str]:
        """The hash of every stored token, sorted, found with SCAN (never KEYS, which blocks Redis)."""
        return await bulk.scan_hashes(self.client, self.layout, count)

    async def write_many(
        self,
        changes: Sequence[tuple[str, Sequence[str]]],
        *,
        marked: bool = True,
        options: Mapping[str, Any] | None = None,
        each_options: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[tuple[Restrictions | None, bool] | LimitExceeded]:
        """Run many `write` changes, each `(token_hash, (op, *args))`, pipelined in one round trip
        (`options` as `write`'s, for every change; `each_options`, one per change, over them: a
        put's entry expiries).

        Each change is atomic on its own, the batch is not. A change refused for the limit comes
        back as its `LimitExceeded` (nothing of it written); raises `StoreNotInitialised` (unless
        `marked` is False: a restore, which writes into an unmarked store) or `StoreUnavailable`.
        """
        results: list[tuple[Restrictions | None, bool] | LimitExceeded] = []
        if marked:
            await self.marker.require()
        with _store_errors():
            replies = await bulk.evalsha_many(
                self.client,
                self._write,
                [
                    self._write_call(
                        token_hash,
                        op,
                        args,
                        marked=marked,
                        options={**(options or {}), **each_options[n]} if each_options else options,
                    )
                    for n, (token_hash, (op, *args)) in enumerate(changes)
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

    def _write_call(
        self,
        token_hash: str,
        op: str,
        args: Sequence[str],
        *,
        marked: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of `lua/write.lua` for one change; `marked`: refused on a store without
        this secret's marker (checked by the script where it can reach the marker); `options`:
        the script's options, over `write_options`."""
        keys = [*self.keys(token_hash), self.history_key(token_hash)]
        encoded = json.dumps({**self.write_options, **options} if options else self.write_options)
        if marked and self.marker.in_script:
            return [*keys, self.marker.key], [op, self.limit, self.marker.value, encoded, *args]
        return keys, [op, self.limit, "", encoded, *args]

    def _write_result(self, reply: list[Any]) -> tuple[Restrictions | None, bool]:
        if reply[0] == "marker":
            raise self.marker.not_initialised(reply[1])
        if reply[0] == "absent":
            return None, False
        if reply[0] == "past":
            raise InvalidEntry(
                f"that expiry has already passed (the store's clock says {_instant(reply[1])}): "
                "give a later --until or a positive --for (nothing was changed)"
            )
        if reply[0] == "moving":
            # Only a pipelined write (`write_many`) gets here: `write` moves the keys and retries.
            raise StoreUnavailable(
                "restriction store unavailable: the token's Redis Cluster slot is being migrated "
                "(nothing written); write it again on its own"
            )
        if reply[0] == "limit":
            list_name = _LIST_NAMES[reply[1]]
            stored = sorted(reply[2])
            raise LimitExceeded(
                f"the {list_name} list allows at most {self.limit} entries; "
                f"it holds {len(stored)}: {', '.join(stored) or '(none)'}",
                limit=self.limit,
                stored=stored,
            )
        _, changed, meta, domains, ips = reply
        return _restrictions(meta, domains, ips), bool(changed)


def _instant(at_ms: int) -> str:
    """An instant in ms since the epoch as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
