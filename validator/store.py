"""The Redis layout of SPEC.md and the commands on it.

Per token, under one hash tag (so one Redis Cluster slot, one round trip):

    {prefix}{<h>}:m   HASH  d, i = switches ("0"/"1"), v = version (grows with every change)
    {prefix}{<h>}:d   SET   normalised domain entries
    {prefix}{<h>}:i   SET   normalised IP entries

`<h>` is a keyed hash (HMAC-SHA256, truncated to 128 bits, base64url) of the token, so neither
keys nor values hold a token in clear. Reads and writes are Lua scripts shipped in `lua/`.

The same layout serves one server (`redis://`), a Sentinel-managed master (`redis+sentinel://`)
and a Redis Cluster (`redis+cluster://`): every command names one token's keys only, so it runs
on the one node that holds the token's slot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from validator import _cluster, _sentinel
from validator._urls import parse_multihost
from validator._wire import Multiplexer, SingleWire, WireError, Wires
from validator.errors import ConfigurationError, LimitExceeded, StoreNotInitialised, StoreUnavailable
from validator.invalidation import SingleServer, Topology
from validator.model import Mode, Restrictions

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

    from validator.denials import DeniedRequest

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "List",
    "Store",
    "UnreadableRecord",
    "fingerprint",
    "parse_read",
    "wrong_type",
]

log = logging.getLogger("validator")

DEFAULT_KEY_PREFIX = "tav:"
# Used only when no secret is configured: keys are then still hashes, but anyone who knows this
# constant can test a guessed token against them. Configure `secret` (or VALIDATOR_SECRET).
_DEFAULT_SECRET = b"token-access-validator/unset-secret"
_MEMORY_SERVERS: dict[str, Any] = {}
# Listeners of in-process changes, per memory server: a `memory://` store has no Redis to send
# invalidations, so its writes notify the validators of the same process directly.
_MEMORY_LISTENERS: dict[str, list[Callable[[str], None]]] = {}
_MEMORY_LOCK = threading.Lock()
# Seconds between two reads of a Redis Cluster's marker by one admin (see `_require_marker`).
_MARKER_RECHECK = 1.0

List = Literal["d", "i"]
_LIST_NAMES: dict[str, str] = {"d": "domain", "i": "IP"}


def _script(name: str) -> str:
    return resources.files("validator").joinpath("lua", name).read_text(encoding="utf-8")


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


def fingerprint(token_hash: str) -> str:
    """A short, non-reversible name of a token for logs and CLI output."""
    return token_hash[:10]


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as error:
        raise StoreUnavailable(f"restriction store unavailable: {error}") from error
    except UnicodeDecodeError as error:
        # Bytes that are not UTF-8, written by hand: nothing safe can be read from them.
        raise StoreUnavailable(f"unreadable reply from the restriction store: {error}") from error
    except AttributeError as error:
        # redis-py's asyncio RedisCluster closes every connection when it refreshes its slot map
        # (after a few MOVED, on CLUSTERDOWN), also those that other requests are using; these
        # then fail with "'NoneType' object has no attribute ..." (redis-py 8.1). It is the store
        # failing, not us: fail closed like any other store error.
        raise StoreUnavailable(f"restriction store unavailable: {error!r}") from error


class UnreadableRecord(StoreUnavailable):
    """A token's stored record cannot be understood (edited by hand, a key of another type): the
    store answered, but nothing safe can be decided from the record, so checks of that token
    fail closed like any store failure."""

    def __init__(self, reason: str, token_hash: str | None = None) -> None:
        record = "record" if token_hash is None else f"record of token {fingerprint(token_hash)}"
        super().__init__(
            f"unreadable {record} in the restriction store ({reason}): "
            "fix it, or delete the token and store it again"
        )
        self.reason = reason
        self.token_hash = token_hash


_SWITCHES = {"0": False, "1": True}
_MODES = {mode.value: mode for mode in Mode}
_META_FIELDS = frozenset(("d", "i", "v", "r"))


def wrong_type(error: BaseException) -> bool:
    """Whether `error`, or the error it was raised from, is Redis's WRONGTYPE reply: one of the
    token's keys holds another type than `lua/read.lua` expects (an unreadable record)."""
    return any(str(cause).startswith("WRONGTYPE") for cause in (error, error.__cause__) if cause is not None)


def parse_read(reply: Any) -> Restrictions | None:
    """Restrictions from the reply of `lua/read.lua` (None: the token is unknown).

    Raises `UnreadableRecord` for a reply that is not a record as `lua/write.lua` writes it.
    """
    if reply is None:
        return None
    if not isinstance(reply, list) or len(reply) != 3:
        raise UnreadableRecord(f"unexpected reply {reply!r:.80}")
    meta, domains, ips = reply
    return _restrictions(meta, domains, ips)


def _texts(part: object) -> bool:
    # Everything `write.lua` stores is ASCII (domains in IDNA form): anything else was not
    # written by an admin command.
    return isinstance(part, (list, tuple)) and all(isinstance(item, str) and item.isascii() for item in part)


def _restrictions(meta: Sequence[str], domains: Sequence[str], ips: Sequence[str]) -> Restrictions:
    # Strict on purpose: a record edited by hand into something `write.lua` never writes (a switch
    # "yes", an unknown mode) could otherwise read as *less* restricted than its owner meant.
    if not all(_texts(part) for part in (meta, domains, ips)):
        raise UnreadableRecord("its keys do not hold a hash and two sets of ASCII text")
    if not meta:
        return Restrictions(domains=sorted(domains), ips=sorted(ips))
    if len(meta) % 2:
        raise UnreadableRecord("its hash came back with an odd number of items")
    fields = dict(zip(meta[::2], meta[1::2], strict=True))
    unknown = sorted(set(fields) - _META_FIELDS)
    if unknown:
        raise UnreadableRecord(f"unknown field(s) {', '.join(map(repr, unknown))}")
    for switch, name in (("d", "domain"), ("i", "IP")):
        if fields.get(switch) not in _SWITCHES:
            raise UnreadableRecord(f"{name} switch {fields.get(switch)!r} is not '0' or '1'")
    version = fields.get("v", "")
    if not version.isascii() or not version.isdigit():
        raise UnreadableRecord(f"version {version!r} is not a number")
    mode = _MODES.get(fields.get("r", Mode.ENFORCE.value))
    if mode is None:
        raise UnreadableRecord(f"mode {fields['r']!r} is not 'enforce' or 'report'")
    return Restrictions(
        domain_enabled=_SWITCHES[fields["d"]],
        ip_enabled=_SWITCHES[fields["i"]],
        domains=sorted(domains),
        ips=sorted(ips),
        version=int(version),
        mode=mode,
    )


class Store:
    """Restrictions in Redis (or the in-process `memory://` store), chosen by URL."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        secret: bytes,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        limit: int = 5,
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
        self.limit = limit
        self.url = url
        self._hmac = hmac.new(secret, digestmod=hashlib.sha256)
        # The Redis nodes whose invalidations keep caches coherent (None: nothing to listen to).
        self.topology = topology
        self._cluster = topology if isinstance(topology, _cluster.ClusterTopology) else None
        # Cache-miss reads go through `wires` (multiplexed connections) when there are some.
        self._wires = wires
        self.local_listeners = [] if local_listeners is None else local_listeners
        self.marker_key = f"{key_prefix}marker"
        # On a Redis Cluster the marker lives in other slots than a token's keys, out of reach of
        # the write script: writes read it first (see `_require_marker`).
        self._marker_in_script = not isinstance(client, RedisCluster)
        self._marker_checked_at = -float("inf")
        # The marker's value proves the secret too: a validator configured with another secret
        # would see every token as unknown (unrestricted), so it must not take the store as sound.
        self.marker_value = hmac.new(secret, b"token-access-validator marker", hashlib.sha256).hexdigest()[
            :16
        ]
        self._read = client.register_script(_script("read.lua"))
        self._write = client.register_script(_script("write.lua"))

    @classmethod
    def from_url(
        cls,
        url: str = "memory://",
        *,
        secret: str | bytes | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        limit: int = 5,
        timeout: float = 0.5,
        connect_timeout: float = 0.5,
    ) -> Store:
        """Build a store from a URL.

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
        scheme = urlsplit(url).scheme
        key = _secret_bytes(secret, scheme)
        if timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError("timeouts must be positive")
        common: dict[str, Any] = {"secret": key, "key_prefix": key_prefix, "limit": limit, "url": url}
        client: aioredis.Redis
        if scheme == "memory":
            try:
                import fakeredis  # in-process store only: not imported for real Redis
            except ImportError:
                raise ConfigurationError(
                    "the memory:// store needs the `memory` extra: "
                    "pip install 'token-access-validator[memory]'"
                ) from None

            name = url[len("memory://") :]
            with _MEMORY_LOCK:
                server = _MEMORY_SERVERS.setdefault(name, fakeredis.FakeServer())
                listeners = _MEMORY_LISTENERS.setdefault(name, [])
            client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
            store = cls(client, local_listeners=listeners, **common)
            # An in-process store cannot be wiped behind our back: it is marked when created, so
            # the demo and unit tests need no `init`.
            fakeredis.FakeRedis(server=server, decode_responses=True).set(
                store.marker_key, store.marker_value, nx=True
            )
            return store
        if scheme in ("redis+cluster", "rediss+cluster"):
            parsed = parse_multihost(url, default_port=6379, options=_cluster.URL_OPTIONS)
            if parsed.path not in ("", "/", "/0"):
                raise ConfigurationError(f"bad store URL {url!r}: a Redis Cluster has database 0 only")
            cluster = _cluster.cluster_client(parsed, timeout=timeout, connect_timeout=connect_timeout)
            topology = _cluster.ClusterTopology(
                cluster, parsed, timeout=timeout, connect_timeout=connect_timeout
            )
            # Over TLS, reads stay on redis-py: multiplexed TLS is tested on one server only.
            wires = (
                None
                if parsed.tls
                else _cluster.ClusterWires(topology, parsed, timeout=timeout, connect_timeout=connect_timeout)
            )
            return cls(cluster, topology=topology, wires=wires, **common)
        if scheme in ("redis+sentinel", "rediss+sentinel"):
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
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"unsupported store URL {url!r}: use memory://, redis://, rediss://, unix://, "
                "redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
            )
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

    # -------------------------------------------------------------------------- keys

    def token_hash(self, token: str) -> str:
        """The keyed hash that names a token's keys."""
        mac = self._hmac.copy()
        mac.update(token.encode("utf-8", "surrogatepass"))
        return base64.urlsafe_b64encode(mac.digest()[:16]).rstrip(b"=").decode("ascii")

    def keys(self, token_hash: str) -> tuple[str, str, str]:
        """The meta, domain and IP keys of one token, sharing the hash tag `{token_hash}`."""
        base = f"{self.key_prefix}{{{token_hash}}}:"
        return base + "m", base + "d", base + "i"

    def hash_of_key(self, key: str) -> str | None:
        """The token hash inside one of our keys (as named by an invalidation message)."""
        if not key.startswith(self.key_prefix):
            return None
        start = len(self.key_prefix)
        end = key.find("}", start)
        if key[start : start + 1] != "{" or end == -1:
            return None
        return key[start + 1 : end]

    # -------------------------------------------------------------------------- commands

    async def read(self, token_hash: str) -> Restrictions | None:
        """One token's restrictions (one round trip), or None if the token is unknown."""
        wire = self._wires.for_tag(token_hash) if self._wires is not None else None
        try:
            if wire is not None:
                reply = await self._wire_read(wire, token_hash)
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
        return wire.send_now("EVALSHA", self._read.sha, 3, *self.keys(token_hash))

    def read_again(self, token_hash: str, error: BaseException) -> bool:
        """Whether a `read_now` that failed with `error` is for `read` to do again rather than a
        failure: the server lost the script, or the cluster redirected the read."""
        if str(error).startswith("NOSCRIPT"):
            return True
        return self._wires is not None and self._wires.redirected(token_hash, error)

    async def _wire_read(self, wire: Multiplexer, token_hash: str) -> Any:
        keys = self.keys(token_hash)
        try:
            try:
                return await wire.execute("EVALSHA", self._read.sha, 3, *keys)
            except WireError as error:
                if not str(error).startswith("NOSCRIPT"):
                    raise
                # A restarted (or flushed-scripts) Redis: load the script once, then read again.
                await wire.execute("SCRIPT", "LOAD", self._read.script)  # type: ignore[arg-type]
                return await wire.execute("EVALSHA", self._read.sha, 3, *keys)
        except WireError as error:
            if self._wires is not None and self._wires.redirected(token_hash, error):
                # A Redis Cluster moved the slot or lost the node: redis-py follows it.
                with _store_errors():
                    return await self._read(keys=keys)
            raise StoreUnavailable(f"restriction store unavailable: {error}") from error

    async def write(self, token_hash: str, op: str, *args: str) -> tuple[Restrictions | None, bool]:
        """Run one atomic change (see `lua/write.lua`); returns the stored state and whether it
        changed. The state is None when the token has no record and the change only takes
        away (remove, clear, disable, mode): such a change creates nothing.

        Raises `StoreNotInitialised` or `LimitExceeded` (nothing written), or `StoreUnavailable`.
        """
        await self._require_marker()
        keys, argv = self._write_call(token_hash, op, args)
        with _store_errors():
            reply = await self._write(keys=keys, args=argv)
        result = self._write_result(reply)
        if result[1]:
            self._notify(token_hash)
        return result

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

    # -------------------------------------------------------------------------- wiped-store marker

    def is_marker_key(self, key: str) -> bool:
        """Whether `key` is (one of) the store's marker key(s)."""
        return key == self.marker_key or (self._cluster is not None and key.startswith(self.marker_key + "{"))

    def not_initialised(self, state: str) -> StoreNotInitialised:
        """The error that refuses a write on a store whose marker is "missing" or "mismatch"."""
        if state == "mismatch":
            message = (
                "this store is marked for another secret: check VALIDATOR_SECRET (it must be the "
                "validators' secret); nothing was written"
            )
        else:
            message = (
                "this store has no marker (never initialised, or wiped): run `validator-admin init` "
                "for a new store, or restore a wiped one from an export with "
                "`validator-admin import --restore FILE`; nothing was written"
            )
        return StoreNotInitialised(message, state=state)

    async def _require_marker(self) -> None:
        # Only `init` (or the end of a restore) marks a store: a write never does, so a wiped
        # store stays failing closed whatever is written to it. One server checks the marker in
        # the write script itself. A Cluster's marker is read before a write, at most once a
        # second: a wipe within that second is not seen by this admin's next writes, which then
        # create records (never the marker) that the restore of the wiped data may overwrite.
        if self._marker_in_script or time.monotonic() - self._marker_checked_at < _MARKER_RECHECK:
            return
        state = await self.marker_state()
        if state != "ok":
            raise self.not_initialised(state)
        self._marker_checked_at = time.monotonic()

    async def _probe_keys(self) -> list[str]:
        if self._cluster is None:
            return [self.marker_key]
        with _store_errors():
            layout = await self._cluster.discover()
        return [self.marker_key + tag for tag in await self.shard_tags(layout)]

    async def marker_state(self) -> Literal["ok", "missing", "mismatch"]:
        """Whether the store carries this deployment's marker (see `write_marker`); on a
        cluster, "missing" as soon as one primary lacks it."""
        keys = await self._probe_keys()
        with _store_errors():
            values = await asyncio.gather(*(self.client.get(key) for key in keys))
        if any(value is not None and value != self.marker_value for value in values):
            return "mismatch"
        return "missing" if None in values else "ok"

    async def write_marker(self) -> bool:
        """Mark the store as initialised for this secret; True if it was not marked before.

        Validators treat a store without the marker as wiped (fail closed). Raises
        `ConfigurationError` if the store is marked for another secret. On a cluster the marker
        is one small key per 16th slot (`<prefix>marker{<tag>}`, 1,024 keys) plus one in a slot
        of each primary: every primary holds markers, and they move with their slots when the
        cluster is resharded.
        """
        if self._cluster is None:
            keys = [self.marker_key]
        else:
            with _store_errors():
                layout = await self._cluster.discover()
            await asyncio.to_thread(_cluster.slot_tags)
            keys = [self.marker_key + tag for tag in self._cluster.marker_tags(layout)]
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, self.marker_value, nx=True)
            created = await pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            existing = [key for key, made in zip(keys, created, strict=True) if not made]
            for key in existing:
                pipe.get(key)
            values = await pipe.execute() if existing else []
        if any(value != self.marker_value for value in values):
            raise ConfigurationError(
                f"this store was initialised with another secret (marker {self.marker_key!r} does "
                "not match): check VALIDATOR_SECRET (it must be the validators' secret)"
            )
        return any(created)

    async def eviction_policies(self) -> dict[str, str | None]:
        """The `maxmemory-policy` of every server that holds tokens: {"": policy} for one server,
        {"host:port": policy} per primary of a Cluster; None where `CONFIG GET` is refused (a
        managed Redis, a renamed command, an ACL). Empty for `memory://`. Raises `StoreUnavailable`.
        """
        if urlsplit(self.url).scheme == "memory":
            return {}
        calls: dict[str, Awaitable[Any]] = {}
        if isinstance(self.client, RedisCluster):
            with _store_errors():
                try:
                    await self.client.initialize()
                except RedisClusterException as error:  # not a RedisError: no node answered
                    raise RedisConnectionError(str(error)) from error
            for node in self.client.get_primaries():
                calls[node.name] = self.client.config_get("maxmemory-policy", target_nodes=node)
        else:
            calls[""] = self.client.config_get("maxmemory-policy")
        names = list(calls)
        with _store_errors():
            replies = await asyncio.gather(*calls.values(), return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                    raise reply
        return {
            name: None if isinstance(reply, BaseException) else reply.get("maxmemory-policy") or None
            for name, reply in zip(names, replies, strict=True)
        }

    async def eviction_risk(self) -> tuple[str | None, str | None]:
        """(problem, doubt) about the eviction policy, each a sentence or None: the problem when
        Redis may evict keys without a TTL (`allkeys-*`), for an evicted record makes its token
        unrestricted; the doubt when `CONFIG GET` is refused so the policy is unknown.
        Raises `StoreUnavailable`."""
        policies = await self.eviction_policies()
        evicting = [
            f"{policy} on {node}" if node else policy
            for node, policy in policies.items()
            if policy is not None and policy.startswith("allkeys-")
        ]
        refused = [node or "the server" for node, policy in policies.items() if policy is None]
        problem = doubt = None
        if evicting:
            problem = (
                f"Redis may evict token records (maxmemory-policy {', '.join(evicting)}), and an "
                "evicted record leaves its token unrestricted: run `CONFIG SET maxmemory-policy "
                "noeviction` (or a volatile-* policy) and keep it in the Redis configuration"
            )
        if refused:
            doubt = (
                f"could not check Redis's maxmemory-policy (CONFIG GET refused on {', '.join(refused)}): "
                "make sure it is noeviction or volatile-*, since allkeys-* may evict token records "
                "and leave those tokens unrestricted"
            )
        return problem, doubt

    async def log_eviction_risk(self) -> None:
        """Log `eviction_risk`: the problem as an error, the doubt as a warning. Never raises: an
        unreachable store is not this check's business (checks fail closed until it answers)."""
        try:
            problem, doubt = await self.eviction_risk()
        except StoreUnavailable as error:
            log.debug("eviction policy not checked: %s", error)
            return
        if problem is not None:
            log.error(problem)
        if doubt is not None:
            log.warning(doubt)

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
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
            if isinstance(self.client, RedisCluster):
                # redis-py's aclose() does nothing while a slot-map refresh is pending (after a
                # connection error), which would leave every node's connections open.
                await self.client.nodes_manager.aclose()
                await self.client.nodes_manager.aclose("startup_nodes")
        if self.topology is not None:
            await self.topology.aclose()

    # -------------------------------------------------------------------------- admin: history, bulk

    def history_key(self, token_hash: str) -> str:
        """The token's capped change history: a list of JSON entries, newest first (`lua/write.lua`)."""
        return f"{self.key_prefix}{{{token_hash}}}:h"

    def _write_call(
        self, token_hash: str, op: str, args: Sequence[str], *, marked: bool = True
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of `lua/write.lua` for one change; `marked`: refused on a store without
        this secret's marker (checked by the script where it can reach the marker)."""
        keys = [*self.keys(token_hash), self.history_key(token_hash)]
        if marked and self._marker_in_script:
            return [*keys, self.marker_key], [op, self.limit, self.marker_value, *args]
        return keys, [op, self.limit, "", *args]

    def _write_result(self, reply: list[Any]) -> tuple[Restrictions | None, bool]:
        if reply[0] == "marker":
            raise self.not_initialised(reply[1])
        if reply[0] == "absent":
            return None, False
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

    async def history(self, token_hash: str, count: int = 50) -> list[str]:
        """The token's `count` most recent history entries (JSON text), newest first."""
        with _store_errors():
            entries = await self.client.lrange(self.history_key(token_hash), 0, count - 1)
        return [entry if isinstance(entry, str) else entry.decode() for entry in entries]

    async def write_many(
        self, changes: Sequence[tuple[str, Sequence[str]]], *, marked: bool = True
    ) -> list[tuple[Restrictions | None, bool] | LimitExceeded]:
        """Run many `write` changes, each `(token_hash, (op, *args))`, pipelined in one round trip.

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
                    self._write_call(token_hash, op, args, marked=marked)
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

    # -------------------------------------------------------------------------- denial log

    # The unknown-token log is 16 capped streams, one per hash tag below: tag k hashes (CRC16,
    # as Redis Cluster does) into the k-th sixteenth of the 16,384 slots, so on a cluster the
    # shards spread over the primaries instead of making one slot hot during a flood. Elsewhere
    # the tags mean nothing. tests/integration/test_denials.py checks the slots.
    UNKNOWN_SHARD_TAGS = (
        "10", "3", "61", "43", "11", "2", "60", "42", "12", "1", "63", "41", "13", "0", "62", "40",
    )  # fmt: skip

    def denials_key(self, token_hash: str) -> str:
        """The stored token's capped, expiring stream of recent denials (see `validator.denials`).

        Deliberately outside `key_prefix`: validators track that prefix for invalidations, and a
        flood of denied requests must not become a flood of invalidation messages (nor evict the
        very tokens being denied).
        """
        return f"{self.key_prefix.rstrip(':')}-denials:{{{token_hash}}}"

    def unknown_denials_key(self, token_hash: str) -> str:
        """The shard of the unknown-token log that holds the denials of `token_hash` while it
        has no stored record: all of one token's in one shard, so a single noisy token pushes
        out only a sixteenth of the others' history."""
        # Any deterministic spread will do: the hash is already uniform.
        tag = self.UNKNOWN_SHARD_TAGS[sum(token_hash.encode()) % len(self.UNKNOWN_SHARD_TAGS)]
        return f"{self.key_prefix.rstrip(':')}-denials:unknown:{{{tag}}}"

    def unknown_denials_keys(self) -> list[str]:
        """Every shard of the unknown-token log."""
        prefix = self.key_prefix.rstrip(":")
        return [f"{prefix}-denials:unknown:{{{tag}}}" for tag in self.UNKNOWN_SHARD_TAGS]

    async def append_denials(
        self,
        stored: Sequence[DeniedRequest],
        unknown: Sequence[DeniedRequest] = (),
        *,
        max_length: int,
        unknown_length: int,
        ttl: float,
    ) -> None:
        """Write one batch of denials in one pipelined round trip (one per node on a cluster).

        `stored`: denials of stored tokens, each appended to its token's stream, trimmed to about
        `max_length`; `unknown`: denials of tokens without a record (unknown or malformed), to
        the unknown-token log under the token's fingerprint, about `unknown_length` in all.
        Every stream written expires `ttl` seconds after its last write.
        """
        shard_length = -(-unknown_length // len(self.UNKNOWN_SHARD_TAGS))
        written: dict[str, None] = {}
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            for denial in stored:
                key = self.denials_key(denial.token_hash)
                pipe.xadd(key, _denial_fields(denial), maxlen=max_length, approximate=True)
                written[key] = None
            for denial in unknown:
                key = self.unknown_denials_key(denial.token_hash)
                fields = _denial_fields(denial, token=fingerprint(denial.token_hash))
                pipe.xadd(key, fields, maxlen=shard_length, approximate=True)
                written[key] = None
            # One expiry per stream and batch, after its last XADD: a flood of denials of one
            # token costs one command per denial, not two.
            for key in written:
                pipe.pexpire(key, max(1, int(ttl * 1000)))
            if written:
                await pipe.execute()

    async def denials(self, token_hash: str, *, since_ms: int = 0, count: int = 100) -> list[dict[str, str]]:
        """The token's most recent denials (newest first), at or after `since_ms`: those of its
        own stream, and those it got while it had no stored record (from the unknown-token log)."""
        low = f"{since_ms}-0" if since_ms else "-"
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.xrevrange(self.denials_key(token_hash), max="+", min=low, count=count)
            # The whole shard (bounded by its cap): the token's entries are among the others'.
            pipe.xrevrange(self.unknown_denials_key(token_hash), max="+", min=low)
            own, shard = await pipe.execute()
        name = fingerprint(token_hash)
        unknown = [(id_, fields) for id_, fields in shard or [] if (fields or {}).get("token") == name]
        entries = _newest_first([own or [], unknown])[:count]
        return [{k: v for k, v in fields.items() if k != "token"} for fields in entries]

    async def unknown_denials(self, *, since_ms: int = 0, count: int = 100) -> list[dict[str, str]]:
        """The most recent denials of tokens without a stored record (newest first), at or after
        `since_ms`, each naming its token by fingerprint (`token`)."""
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            for key in self.unknown_denials_keys():
                pipe.xrevrange(key, max="+", min=f"{since_ms}-0" if since_ms else "-", count=count)
            shards = await pipe.execute()
        return _newest_first([shard or [] for shard in shards])[:count]

    async def delete_denials(self, token_hash: str) -> None:
        """Delete the token's own stream (its entries in the unknown-token log age out there)."""
        with _store_errors():
            await self.client.delete(self.denials_key(token_hash))


def _denial_fields(denial: DeniedRequest, token: str | None = None) -> dict[FieldT, EncodableT]:
    # The per-token stream's format, which `validator-admin denials` and `check --replay` read;
    # the unknown-token log's entries also name their `token` (by fingerprint).
    fields: dict[FieldT, EncodableT] = {
        "at": denial.at_ms,
        "source": denial.source,
        "seen": denial.seen,
        "reason": denial.reason,
        "mode": denial.mode,
        "origin": denial.origin,
    }
    return fields if token is None else {"token": token, **fields}


def _newest_first(streams: Sequence[Sequence[tuple[str, Mapping[str, str] | None]]]) -> list[dict[str, str]]:
    """The entries of several XREVRANGE replies as one list, newest first (by stream ID)."""
    merged = [(id_, fields) for stream in streams for id_, fields in stream]
    merged.sort(key=lambda entry: tuple(int(part) for part in str(entry[0]).split("-")), reverse=True)
    return [{str(name): str(value) for name, value in (fields or {}).items()} for _, fields in merged]
