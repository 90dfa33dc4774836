"""A minimal multiplexed Redis connection for the read path of cache misses.

redis-py's asyncio client spends ~100-300 µs of Python per command (connection pool, retry
layer, command parsing), which caps cold checks at a few thousand per second no matter how many
tasks wait (benchmarks: `miss`). Here every concurrent read shares one connection: requests are
queued in order, written in one batch per event-loop iteration, and their replies, parsed by
hiredis, resolve plain futures in the same order (Redis answers in order on a connection).
No task, no pool, no per-request timer.

Only what the read path needs: connect (TCP, TLS or unix socket), AUTH, SELECT, and commands.
TLS takes redis-py's options (`ssl_cert_reqs`, `ssl_ca_certs`, ...) with redis-py's defaults
(`tls_context`), so both connections to one `rediss://` URL trust and present the same certificates.
Everything else (writes, admin, pub/sub) stays on redis-py. A Redis Cluster gets one multiplexed
connection per primary (`validator.store.cluster.ClusterWires`), a Sentinel deployment one to the
current master (`validator.store.sentinel.SentinelWire`), behind the same `Wires` interface as one
server's (`SingleWire`).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import select
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, Self, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.asyncio.connection import parse_url

from validator.errors import ConfigurationError

__all__ = ["Multiplexer", "SingleWire", "WireError", "Wires", "pack_transaction", "tls_context"]

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _verify_mode(options: Mapping[str, Any]) -> ssl.VerifyMode:
    """The verify mode `ssl_cert_reqs` asks for; raises `ConfigurationError` for options that
    mean nothing."""
    if options.get("ssl_keyfile") and not options.get("ssl_certfile"):
        raise ConfigurationError("store URL option ssl_keyfile needs ssl_certfile (the certificate)")
    value = options.get("ssl_cert_reqs", "required")
    if value is None or isinstance(value, ssl.VerifyMode):
        return value or ssl.CERT_NONE
    if value not in _CERT_REQS:
        raise ConfigurationError(
            f"store URL option ssl_cert_reqs={value!r} is not one of: none, optional, required"
        )
    return _CERT_REQS[value]


def tls_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """An SSL context from TLS options named, valued and defaulted as redis-py's `SSLConnection`
    takes them (`ssl_cert_reqs` "required", `ssl_check_hostname` true, `ssl_ca_certs`,
    `ssl_certfile`, ...), so that it trusts and presents what redis-py's client does.

    Raises `ConfigurationError` for a value that means nothing, `OSError` (naming the option) for
    a certificate or key that cannot be loaded.
    """
    mode = _verify_mode(options)
    context = ssl.create_default_context()
    # As redis-py: no name to check on a certificate that is not verified (and check_hostname
    # must be off before verify_mode may be CERT_NONE).
    context.check_hostname = mode != ssl.CERT_NONE and bool(options.get("ssl_check_hostname", True))
    context.verify_mode = mode
    for flag in options.get("ssl_include_verify_flags") or ():
        context.verify_flags |= flag
    for flag in options.get("ssl_exclude_verify_flags") or ():
        context.verify_flags &= ~flag
    certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if certfile:
        try:
            context.load_cert_chain(certfile, keyfile, options.get("ssl_password"))
        except OSError as error:
            shown = f"ssl_certfile={certfile!r}" + (f" ssl_keyfile={keyfile!r}" if keyfile else "")
            raise OSError(f"TLS: cannot load {shown}: {error.strerror or error}") from error
    authorities = {name: options.get(name) for name in ("ssl_ca_certs", "ssl_ca_path", "ssl_ca_data")}
    if any(authorities.values()):
        try:
            context.load_verify_locations(*authorities.values())
        except OSError as error:
            shown = " ".join(
                f"{name}={value!r}" for name, value in authorities.items() if value and name != "ssl_ca_data"
            )
            raise OSError(f"TLS: cannot load {shown or 'ssl_ca_data'}: {error.strerror or error}") from error
    if options.get("ssl_min_version") is not None:
        context.minimum_version = options["ssl_min_version"]
    if options.get("ssl_ciphers") is not None:
        context.set_ciphers(options["ssl_ciphers"])
    return context


# What a TLS alert from the server means for the store URL's options (OpenSSL's reason codes).
_TLS_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": (
        "the server requires a client certificate: set ssl_certfile and ssl_keyfile"
    ),
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the client certificate (ssl_certfile)",
}


def _tls_problem(error: BaseException | None) -> str | None:
    """What to fix in the TLS options when `error` is a TLS failure, else None."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate is refused: {error.verify_message.rstrip('.')}; "
            "check ssl_ca_certs and the host name in the store URL"
        )
    if isinstance(error, ssl.SSLError) and error.reason in _TLS_ALERTS:
        return f"TLS: {_TLS_ALERTS[error.reason]}"
    return None


def _pack(args: tuple[str | int, ...]) -> bytes:
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub wants a 1-tuple
    return packed


class WireError(Exception):
    """The connection failed, timed out, or Redis answered with an error.

    `kind` says which: "reply" (Redis answered an error: the message is its text), "timeout"
    (no reply, or no connection, in time), "connection" (refused, lost, or broken), "closed"
    (the store is closing), "left" (the node no longer serves us: see `Wires`).
    """

    def __init__(self, message: str, kind: str = "connection") -> None:
        super().__init__(message)
        self.kind = kind


def _transaction_outcome(replies: list[Any]) -> Any:
    """What a transaction (MULTI, the queued commands, EXEC: `replies` are theirs) answered: EXEC's
    reply, the queued commands' replies in order, or the `WireError` (kind "reply") that says why
    it did not run.

    Redis checks a Redis Cluster slot twice: each command as it is queued, and all the keys
    together at EXEC (as for one multi-key command). A command refused while queued (MOVED, ASK)
    makes EXEC answer EXECABORT, which names no node: the refusal is the answer then, so that
    the redirect logic (`Wires.redirected`, `validator.store.migration`) sees the MOVED or ASK.
    On a migrating slot's source each single-key command is answered ASK when its key is not
    there: all of them ASK means none of the keys is left there (ASK), some means the keys are
    split (answered as Redis answers a multi-key command then: TRYAGAIN).
    """
    executed = replies[-1]
    if executed.__class__ is list:
        for item in executed:
            if isinstance(item, hiredis.ReplyError):  # WRONGTYPE: a key of another type
                return WireError(str(item), "reply")
        return executed
    if isinstance(replies[0], hiredis.ReplyError):  # MULTI refused (NOAUTH, say): nothing queued
        return WireError(str(replies[0]), "reply")
    text = str(executed)
    if not isinstance(executed, hiredis.ReplyError):
        return WireError(f"unexpected EXEC reply {executed!r:.80}", "reply")
    if not text.startswith("EXECABORT"):
        return WireError(text, "reply")  # refused at EXEC: MOVED, ASK, TRYAGAIN, CLUSTERDOWN ...
    refusals = [str(reply) for reply in replies[1:-1] if isinstance(reply, hiredis.ReplyError)]
    if not refusals:
        return WireError(text, "reply")
    asks = [refusal for refusal in refusals if refusal.startswith("ASK ")]
    if len(asks) == len(refusals):
        if len(asks) == len(replies) - 2:
            return WireError(asks[0], "reply")
        return WireError(f"TRYAGAIN keys split by a slot migration ({asks[0]} for some)", "reply")
    moved = [refusal for refusal in refusals if refusal.startswith("MOVED ")]
    return WireError((moved or refusals)[0], "reply")


# RESP of MULTI and EXEC, written around a transaction's commands.
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def pack_transaction(*commands: tuple[str | int, ...]) -> bytes:
    """MULTI, `commands`, EXEC, packed for `Multiplexer.transaction_now` or `transaction`."""
    return b"".join((_MULTI, *map(_pack, commands), _EXEC))


class _Reply(asyncio.Future[Any]):
    """The future of a request whose done callbacks run as soon as `data_received` has parsed
    its reply, in the same event-loop pass, instead of one pass later through `call_soon`:
    a cache miss chains its read's future to the validator's and the cache's, and each link that
    waits for the next pass is a pass more per miss than a hand-written client's one (issue 26).

    Only callbacks added without a `context` run so (an awaiting task passes its own, and is
    woken as usual); they run after the reply loop, never while it parses, each error reported
    to the loop's exception handler as `call_soon` would. Settled any other way (the connection
    failed or closed, cancelled), the callbacks are scheduled as usual.
    """

    __slots__ = ("_now",)

    # No `__init__` of its own (one Python call less per read, benchmarks: miss): `_now`, the
    # callbacks held back, is set by the first one added.
    _now: list[Callable[[Any], object]]

    def add_done_callback(
        self, fn: Callable[[Self], object], *, context: contextvars.Context | None = None
    ) -> None:
        if context is not None or self.done():
            super().add_done_callback(fn, context=context)
            return
        try:
            self._now.append(fn)
        except AttributeError:
            self._now = [fn]

    def _take(self) -> list[Callable[[Any], object]]:
        """The callbacks held back, now no longer held."""
        try:
            callbacks = self._now
        except AttributeError:
            return []
        self._now = []
        return callbacks

    def remove_done_callback(self, fn: Callable[[Self], object]) -> int:
        callbacks = self._take()
        kept = [callback for callback in callbacks if callback != fn]
        self._now = kept
        return len(callbacks) - len(kept) + super().remove_done_callback(fn)

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self.schedule_callbacks()
        return True

    def schedule_callbacks(self) -> None:
        """Schedule the callbacks held back, as a plain future's are (settled outside a reply)."""
        loop = self.get_loop()
        for callback in self._take():
            loop.call_soon(callback, self)

    def run_callbacks(self) -> None:
        """Run the callbacks held back, now (its reply has just been parsed)."""
        for callback in self._take():
            try:
                callback(self)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as error:
                self.get_loop().call_exception_handler(
                    {"message": f"Exception in callback {callback!r}", "exception": error, "future": self}
                )


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: Multiplexer) -> None:
        self.owner = owner
        # A byte that is not UTF-8 (written by hand) must fail that token's record, not the
        # connection every read shares: it decodes as a surrogate, which parsing refuses.
        self.reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        self.transport: asyncio.Transport | None = None
        # The replies of the transaction at the head of the queue, so far.
        self.gathered: list[Any] = []
        # The loop the connection lives on, asked once: `asyncio.get_running_loop()` makes a
        # getpid() system call per call on CPython 3.11 (~9% of a cache miss, issue 14).
        self.loop = asyncio.get_running_loop()
        self.answered = False  # whether the server has sent anything yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.answered = True
        settled: list[_Reply] = []
        try:
            self._replies(data, settled)
        finally:
            # After the reply loop: a callback may send more (a queued read), or fail the connection.
            for reply in settled:
                reply.run_callbacks()

    def _replies(self, data: bytes, settled: list[_Reply]) -> None:
        reader = self.reader
        reader.feed(data)
        try:
            self._parse(reader.gets, settled)
        except hiredis.ProtocolError as error:
            # Not a Redis server at all (a store URL pointing at an HTTP port, say).
            self.owner._fail(WireError(f"not a Redis server: {error}"), self)

    def _parse(self, gets: Callable[[], Any], settled: list[_Reply]) -> None:
        pending = self.owner._pending
        while True:
            reply = gets()
            if reply is False:
                return
            if not pending:
                self.owner._fail(WireError("reply without a request"))
                return
            future, _, expected = pending[0]
            if expected < 0:
                # Commands sent together by `send_packed`: their replies settle its future as a
                # list once the last is in, each error reply as a `WireError` in its place.
                gathered = self.gathered
                gathered.append(
                    WireError(str(reply), "reply") if isinstance(reply, hiredis.ReplyError) else reply
                )
                if len(gathered) < -expected:
                    continue
                self.gathered = []
                pending.popleft()
                if not future.done():
                    future.set_result(gathered)
                continue
            if expected != 1:
                # A transaction: its replies are gathered, and settle its future at EXEC's. The
                # rest of them read here while they are in (MULTI's, each QUEUED, EXEC's: five
                # replies per read), not one turn of the outer loop each (benchmarks: miss).
                gathered = self.gathered
                gathered.append(reply)
                while len(gathered) < expected:
                    reply = gets()
                    if reply is False:
                        return
                    gathered.append(reply)
                self.gathered = []
                pending.popleft()
                if not future.done():
                    outcome = _transaction_outcome(gathered)
                    if outcome.__class__ is WireError:
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                    if future.__class__ is _Reply:
                        settled.append(future)
                continue
            pending.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(WireError(str(reply), "reply"))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = _tls_problem(exc) or exc or "closed by server"
        tls = self.owner._tls
        no_certificate = tls is not None and not tls.get("ssl_certfile")
        if isinstance(exc, ConnectionResetError) and not self.answered and no_certificate:
            # A TLS 1.3 server checks the client certificate after the handshake; its alert
            # ("certificate required") races the first request and may be lost to the reset.
            reason = f"{exc} before any reply; perhaps {_TLS_ALERTS['TLSV13_ALERT_CERTIFICATE_REQUIRED']}"
        self.owner._fail(WireError(f"connection lost: {reason}"), self)


class Multiplexer:
    """One lazily (re)connected Redis connection shared by every concurrent request.

    A `rediss://` URL connects over TLS with the options of its query (see `tls_context`);
    `tls` gives them for any other TCP URL (a node of a multi-host URL).
    Raises `ConfigurationError` for a TLS option whose value means nothing.
    """

    def __init__(
        self, url: str, *, timeout: float, connect_timeout: float, tls: Mapping[str, Any] | None = None
    ) -> None:
        parts = urlsplit(url)
        if tls is None and parts.scheme == "rediss":
            try:
                # redis-py's own parser: the two connections read the same values from the URL.
                parsed: Mapping[str, Any] = parse_url(url)
            except ValueError as error:
                raise ConfigurationError(f"bad store URL: {error}") from None
            tls = {name: value for name, value in parsed.items() if name.startswith("ssl_")}
        if tls is not None:
            _verify_mode(tls)
        self._tls = tls
        query = parse_qs(parts.query)
        self._scheme = parts.scheme
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = unquote(parts.path) if parts.scheme == "unix" else ""
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        db_text = (
            query["db"][0] if "db" in query else parts.path.lstrip("/") if parts.scheme != "unix" else ""
        )
        self._db = int(db_text or 0)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        # Per request queued: its future, its batch (when the batch was written: one list per
        # `_flush`, [0.0] until then), and how many replies it takes (1; a transaction's, all of
        # its commands'; minus the count for `send_packed`).
        self._pending: collections.deque[tuple[asyncio.Future[Any], list[float], int]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._batch: list[float] = [0.0]  # the batch of the requests queued since the last flush
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed: WireError | None = None

    async def execute(self, *args: str | int) -> Any:
        """Send one command and wait for its reply. Raises `WireError`."""
        protocol = self._protocol
        if protocol is None:
            if self._closed is not None:
                raise self._closed
            protocol = await self._connect()
        return await self._send(protocol, _pack(args))

    def send_now(self, *args: str | int) -> asyncio.Future[Any] | None:
        """Queue one command if the connection is up: the future of its reply, else None."""
        protocol = self._protocol
        if protocol is None:
            return None
        return self._send(protocol, _pack(args))

    async def transaction(self, packed: bytes, commands: int) -> Any:
        """Run a transaction packed by `pack_transaction` with `commands` commands and wait for
        EXEC's reply (the commands' replies). Raises `WireError` (see `_transaction_outcome`)."""
        protocol = self._protocol
        if protocol is None:
            if self._closed is not None:
                raise self._closed
            protocol = await self._connect()
        return await self._send(protocol, packed, commands + 2)

    def transaction_now(self, packed: bytes, commands: int) -> asyncio.Future[Any] | None:
        """`transaction` if the connection is up: the future of EXEC's reply, else None. Its
        done callbacks (added without a context) run as soon as the reply is parsed, in the
        same event-loop pass (see `_Reply`); an awaiting task is woken as usual."""
        protocol = self._protocol
        if protocol is None:
            return None
        return self._send(protocol, packed, commands + 2, _Reply(loop=protocol.loop))

    def send_packed(self, data: bytes, replies: int) -> asyncio.Future[list[Any]] | None:
        """Queue `replies` commands packed together in RESP (`data`, not a transaction) if the
        connection is up: ONE future, of the list of their replies in order, each error reply a
        `WireError` (kind "reply") in its place; else None. The future fails (`WireError`) only
        when the connection does (lost, timed out, closed): then none of the replies is known.

        For a writer that sends many commands at once (`DenialStreams.append_denials`): one
        future and one queue entry for all of them instead of one per command.
        """
        if replies < 1:
            raise ValueError(f"send_packed needs at least one command, not {replies}")
        protocol = self._protocol
        if protocol is None:
            return None
        # Pending entries count replies as negative numbers to tell them from a transaction's.
        return self._send(protocol, data, -replies)

    def _send(
        self, protocol: _Protocol, packed: bytes, replies: int = 1, future: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Any]:
        loop = protocol.loop
        if future is None:
            future = loop.create_future()
        self._pending.append((future, self._batch, replies))
        self._outgoing.append(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, protocol)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check_timeouts)
        return future

    def _flush(self, protocol: _Protocol) -> None:
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        if protocol.transport is not None and not protocol.transport.is_closing():
            protocol.transport.write(b"".join(outgoing))
        # A request's clock starts when it is written, not when it was queued: a loop kept busy
        # between the two (a burst of tasks on a starved CPU) is not Redis being slow. The
        # requests written together share their batch's time: set once, not per request.
        self._batch[0] = time.monotonic()
        self._batch = [0.0]

    def _check_timeouts(self) -> None:
        self._watchdog = None
        if not self._pending:
            return
        _, batch, _ = self._pending[0]
        # Replies come in order: if the oldest is late, the connection is stuck (e.g. a
        # SIGSTOPped server). Drop it, failing everything queued on it. Not written yet
        # (0.0): its clock has not started.
        now = time.monotonic()
        late = now - (batch[0] or now) - self.timeout
        loop = asyncio.get_running_loop()
        if late < 0:
            self._watchdog = loop.call_later(-late, self._check_timeouts)
        elif self._unread_data():
            # Our own event loop was late (a CPU-starved process), not Redis: the replies are
            # waiting in the socket. Let the loop read them, then look again.
            self._watchdog = loop.call_later(0.001, self._check_timeouts)
        else:
            self._fail(WireError(f"no reply within {self.timeout}s", "timeout"))

    def _unread_data(self) -> bool:
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return False
        sock = protocol.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(readable)

    def _fail(self, error: WireError, protocol: _Protocol | None = None) -> None:
        if protocol is not None and protocol is not self._protocol:
            return
        current, self._protocol = self._protocol, None
        if current is not None and current.transport is not None:
            current.transport.abort()
        pending, self._pending = self._pending, collections.deque()
        self._outgoing = []
        for future, _, _ in pending:
            if not future.done():
                future.set_exception(error)
                if future.__class__ is _Reply:
                    future.schedule_callbacks()

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self._scheme == "unix":
                    _, protocol = await loop.create_unix_connection(lambda: _Protocol(self), self._path)
                else:
                    # Made at each connect: a certificate renewed on disk is taken up by the
                    # next reconnect, and a missing file fails reads, not the construction.
                    context = tls_context(self._tls) if self._tls is not None else None
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self), self._host, self._port, ssl=context
                    )
                self._protocol = protocol
                if self._password is not None:
                    auth = (self._username, self._password) if self._username else (self._password,)
                    await self._send(protocol, _pack(("AUTH", *auth)))
                if self._db:
                    await self._send(protocol, _pack(("SELECT", self._db)))
        except (OSError, TimeoutError, WireError) as error:
            kind = error.kind if isinstance(error, WireError) else "connection"
            problem = _tls_problem(error)
            if problem is not None:
                error = OSError(problem)
            if isinstance(error, TimeoutError):
                kind, error = "timeout", TimeoutError(f"no connection within {self.connect_timeout}s")
            self._fail(WireError(f"cannot connect: {error}", kind))
            raise WireError(f"cannot connect to Redis: {error}", kind) from error
        if self._closed is not None:
            # Closed while connecting: nothing may stay open behind its owner's back.
            self._fail(self._closed)
            raise self._closed
        return protocol

    def close(self, error: WireError | None = None) -> None:
        """Fail every pending request with `error` (default: kind "closed") and stay closed:
        later requests fail at once with it."""
        self._closed = error or WireError("closed", "closed")
        self._fail(self._closed)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def reopen(self) -> None:
        """Undo `close`: the next request connects again (a validator started after a close)."""
        self._closed = None


class Wires(Protocol):
    """The multiplexed connections of a store's read path, chosen by a token's hash tag."""

    def for_tag(self, tag: str) -> Multiplexer | None:
        """The connection that serves the keys tagged `tag`, or None: use redis-py."""

    def redirected(self, tag: str, error: BaseException) -> bool:
        """Whether a read of `tag` that failed with `error` belongs on redis-py instead (a
        Redis Cluster redirection or a node gone: redis-py follows them); learns from it."""

    def close(self) -> None: ...

    def reopen(self) -> None: ...


class SingleWire:
    """One server: every read on its one connection; nothing to redirect."""

    def __init__(self, multiplexer: Multiplexer) -> None:
        self.multiplexer = multiplexer

    def for_tag(self, tag: str) -> Multiplexer:
        return self.multiplexer

    def redirected(self, tag: str, error: BaseException) -> bool:
        return False

    def close(self) -> None:
        self.multiplexer.close()

    def reopen(self) -> None:
        self.multiplexer.reopen()
