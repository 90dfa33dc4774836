"""The gate's own HTTP/1.1 server: asyncio + httptools, for the one small request a proxy sends.

A forward-auth request is a head (method, URI, headers) with no body, asked over a kept-alive
connection by the proxy, answered with a status, a few headers and a short body. uvicorn runs a
whole request cycle per check (a task, flow control, per-request timers, its default headers):
about half the CPU of a check behind nginx. This server parses with httptools, builds the same
ASGI scope uvicorn builds, and calls the same app (`Gate`): a check that needs no look-up (a
cached token, a refusal) runs to its end without a task or a loop pass; one that waits on the
store continues in a task, the connection's later requests queued behind it in order.

Bounds, so that an unauthenticated client cannot grow the gate's memory or hold its connections:
a request head of at most `MAX_HEAD` bytes (431 otherwise), `MAX_HEADERS` headers, a body (which
the gate never reads) of at most `MAX_BODY` bytes (413); the head must arrive within
`HEAD_TIMEOUT` seconds of its first byte, and an idle kept-alive connection is closed after
`IDLE_TIMEOUT`; at most `MAX_QUEUED` pipelined requests wait, after which reading pauses. Input
httptools cannot parse gets 400 and the connection closed: never the app, so never an allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from functools import partial
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import quote, unquote

import httptools

from validator.web.types import ASGIApp, Message, Scope

__all__ = ["HEAD_TIMEOUT", "IDLE_TIMEOUT", "MAX_BODY", "MAX_HEAD", "MAX_HEADERS", "serve"]

log = logging.getLogger("validator")
access_log = logging.getLogger("uvicorn.access")  # the logger (and format) uvicorn's access log has

MAX_HEAD: Final = 64 * 1024  # bytes of a request line and headers
MAX_HEADERS: Final = 200
MAX_BODY: Final = 64 * 1024  # a forward-auth request has none; Envoy may be told to send one
MAX_QUEUED: Final = 32  # pipelined requests waiting behind one that waits on the store
HEAD_TIMEOUT: Final = 10.0
IDLE_TIMEOUT: Final = 75.0  # longer than nginx's upstream `keepalive_timeout` (60 s)

_ASGI: Final = {"version": "3.0", "spec_version": "2.3"}
_STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("latin-1") for status in HTTPStatus
}
_BODY: Final[Message] = {"type": "http.request", "body": b"", "more_body": False}
_CLOSE: Final = b"connection: close\r\n"


def _error(status: int) -> bytes:
    """A response of the server's own (the app never saw the request), after which it closes."""
    phrase = HTTPStatus(status).phrase.encode()
    return (
        _STATUS_LINES[status] + b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(phrase)).encode() + b"\r\n" + _CLOSE + b"\r\n" + phrase
    )


_BAD_REQUEST: Final = _error(400)
_TOO_LARGE: Final = _error(413)
_HEAD_TOO_LARGE: Final = _error(431)
_SERVER_ERROR: Final = _error(500)


class _TooLarge(Exception):
    pass


class _Resumed:
    """The rest of a coroutine that has already run to its first suspension, for a task: the
    check of a cached token never gets here, one that waits on the store does."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self.coro, self.yielded
        self.yielded = None
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as error:  # passed on to the coroutine
                try:
                    value = coro.throw(error)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


async def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    await _Resumed(coro, yielded)


class _Exchange:
    """One request and its response: the ASGI `receive` and `send` the app gets."""

    __slots__ = ("head", "keep_alive", "out", "scope", "started", "status")

    def __init__(self, scope: Scope, keep_alive: bool, head: bool) -> None:
        self.scope = scope
        self.keep_alive = keep_alive
        self.head = head  # a HEAD request: no body goes out
        self.out: list[bytes] = []
        self.started = False
        self.status = 0

    async def receive(self) -> Message:
        return _BODY

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the response has already started")
            self.started = True
            status = self.status = message["status"]
            line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()
            parts = [line]
            length = False
            for name, value in message.get("headers", ()):
                if name.lower() == b"content-length":
                    length = True
                parts += (name, b": ", value, b"\r\n")
            if not length:
                self.keep_alive = False  # the body ends where the connection does
            if not self.keep_alive:
                parts.append(_CLOSE)
            parts.append(b"\r\n")
            self.out.append(b"".join(parts))
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("a body before the response started")
            body = message.get("body", b"")
            if body and not self.head:
                self.out.append(body)
        # Anything else (a `websocket.*` message to an HTTP request) is not answered here.


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.queue: deque[_Exchange | _Refusal] = deque()
        self.running: asyncio.Task[None] | None = None
        self.paused = False
        self.closing = False
        # When the connection is closed unless something happens first (`_Server.tick`): a head
        # not complete in time, a kept-alive connection idle too long. None while the app runs.
        self.deadline: float | None = None
        # The request being parsed.
        self.current: _Exchange | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = False  # between a request's first byte and the end of its head
        self.head_bytes = 0
        self.body_bytes = 0

    # ---------------------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.client = (str(peer[0]), int(peer[1]))
        if isinstance(local, tuple):
            self.local = (str(local[0]), int(local[1]))
        self.server.connections.add(self)
        self.deadline = self.loop.time() + IDLE_TIMEOUT

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if not self.server.connections:
            self.server.idle.set()
        if self.running is not None:
            self.running.cancel()
        self.queue.clear()

    def _close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        """Answer with the server's own error (after any answers due before it) and close."""
        if self.transport is None or self.closing:
            return
        self.transport.pause_reading()
        self.paused = True
        if self.running is None and not self.queue:
            self.transport.write(response)
            self._close()
        else:
            self.queue.append(_Refusal(response))

    def shutdown(self) -> None:
        """The server stops: close now if idle, else after the answers due."""
        if self.running is None and not self.queue and not self.in_head:
            self._close()
        else:
            self.queue.append(_Refusal(b""))

    # ---------------------------------------------------------------------------- parsing

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # `Connection: upgrade` (a WebSocket handshake, `CONNECT`): nothing a proxy asks the gate
            # about. Its head was answered like any other (a 101 is never sent); nothing follows.
            self._refuse(b"")
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, _TooLarge):
                self._refuse(_BAD_REQUEST)
            else:
                self._refuse(_HEAD_TOO_LARGE if self.in_head else _TOO_LARGE)
        except httptools.HttpParserError:
            self._refuse(_BAD_REQUEST)
        else:
            if self.in_head:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD:
                    self._refuse(_HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.in_head = True
        self.head_bytes = 0
        self.body_bytes = 0
        self.deadline = self.loop.time() + HEAD_TIMEOUT  # a request began: its head must come in time

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_HEAD:
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name.lower(), value))
        if len(headers) > MAX_HEADERS:
            raise _TooLarge

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.local,
            "client": self.client,
            "scheme": "http",
            "method": method,
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "headers": self.headers,
            "state": {},
        }
        self.current = _Exchange(scope, parser.should_keep_alive() and version == "1.1", method == "HEAD")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY:
            raise _TooLarge

    def on_message_complete(self) -> None:
        exchange, self.current = self.current, None
        if exchange is None:
            return
        self.deadline = None
        self.queue.append(exchange)
        if self.running is None:
            self._answer()
        elif len(self.queue) > MAX_QUEUED and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    # ---------------------------------------------------------------------------- answering

    def _answer(self) -> None:
        """Run the queued requests in order, as far as they run without waiting."""
        queue = self.queue
        while queue and self.running is None and not self.closing:
            exchange = queue.popleft()
            if isinstance(exchange, _Refusal):
                if exchange.response:
                    self._write(exchange.response)
                self._close()
                return
            coro: Any = self.app(exchange.scope, exchange.receive, exchange.send)
            try:
                yielded = coro.send(None)
            except StopIteration:
                self._finish(exchange, None)
            except BaseException as error:  # the app failed: a 500, logged
                self._finish(exchange, error)
            else:
                task = self.loop.create_task(_resume(coro, yielded))
                self.running = task
                task.add_done_callback(partial(self._resumed, exchange=exchange))
        if not queue and self.running is None and not self.closing:
            if self.paused and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()
            if not self.in_head:
                self.deadline = self.loop.time() + IDLE_TIMEOUT

    def _resumed(self, task: asyncio.Task[None], exchange: _Exchange) -> None:
        self.running = None
        if self.closing:
            return
        error = None if task.cancelled() else task.exception()
        self._finish(exchange, error)
        self._answer()

    def _finish(self, exchange: _Exchange, error: BaseException | None) -> None:
        if error is not None:
            log.error("the gate failed on a request", exc_info=error)
        if error is not None or not exchange.started:
            if not exchange.started and error is None:
                log.error("the gate sent no response")
            exchange.status = 500
            self._write(_SERVER_ERROR)
            self._close()
        else:
            self._write(b"".join(exchange.out))
            if not exchange.keep_alive:
                self._close()
        if self.server.access_log:
            scope = exchange.scope
            query = scope["query_string"]
            target = quote(scope["path"]) + ("?" + query.decode("latin-1") if query else "")
            client = self.client
            address = f"{client[0]}:{client[1]}" if client else "-"
            access_log.info(
                '%s - "%s %s HTTP/%s" %d',
                address,
                scope["method"],
                target,
                scope["http_version"],
                exchange.status,
            )

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)


class _Refusal:
    """In a connection's queue: the server's own answer, then the connection closes."""

    __slots__ = ("response",)

    def __init__(self, response: bytes) -> None:
        self.response = response


class _Server:
    def __init__(self, app: ASGIApp, loop: asyncio.AbstractEventLoop, access_log: bool) -> None:
        self.app = app
        self.loop = loop
        self.access_log = access_log
        self.connections: set[_Connection] = set()
        self.idle = asyncio.Event()  # set when the last connection closes

    def protocol(self) -> _Connection:
        return _Connection(self)

    async def tick(self) -> None:
        """Close the connections past their deadline, once a second (one timer for all, not one
        per request)."""
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for connection in [c for c in self.connections if c.deadline is not None and c.deadline < now]:
                connection._close()


# ------------------------------------------------------------------------------------ lifespan


class _Lifespan:
    """The app's ASGI lifespan: start-up before the first connection, shut-down after the last."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.started: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.stopped: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.started.set_result(None)
        elif kind == "lifespan.startup.failed":
            self.started.set_result(message.get("message") or "start-up failed")
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            self.stopped.set_result(message.get("message"))

    async def _run(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": _ASGI, "state": {}}
        try:
            await self.app(scope, self.inbox.get, self._send)
        finally:
            for future in (self.started, self.stopped):
                if not future.done():
                    future.set_result("the app's lifespan ended")

    async def startup(self) -> str | None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        return await self.started

    async def shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.stopped
        if self.task is not None:
            await self.task


# ------------------------------------------------------------------------------------ running


async def _serve(app: ASGIApp, sock: socket.socket, access_log: bool, stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    lifespan = _Lifespan(app)
    failed = await lifespan.startup()
    if failed is not None:
        log.error("the gate could not start: %s", failed)
        return 1
    server_state = _Server(app, loop, access_log)
    server = await loop.create_server(server_state.protocol, sock=sock, backlog=2048)
    ticker = loop.create_task(server_state.tick())
    host, port = sock.getsockname()[:2]
    log.info("validator-gate answering on http://%s:%s (pid %d)", host, port, os.getpid())
    try:
        await stop.wait()
    finally:
        ticker.cancel()
        server.close()
        for connection in list(server_state.connections):
            connection.shutdown()
        with contextlib.suppress(asyncio.TimeoutError):
            if server_state.connections:
                await asyncio.wait_for(server_state.idle.wait(), 5.0)
        for connection in list(server_state.connections):
            connection._close()
        await lifespan.shutdown()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _run_one(make_app: Callable[[], ASGIApp], sock: socket.socket, access_log: bool) -> int:
    try:
        import uvloop
    except ImportError:  # Windows: asyncio's own loop
        uvloop = None  # type: ignore[assignment]

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        return await _serve(make_app(), sock, access_log, stop)

    if uvloop is not None:
        return uvloop.run(main())
    return asyncio.run(main())


def serve(
    make_app: Callable[[], ASGIApp], *, host: str, port: int, workers: int = 1, access_log: bool = False
) -> int:
    """Serve the app `make_app` builds on `host`:`port` until SIGTERM or SIGINT; with `workers`
    above 1, in that many processes sharing the listening socket (each builds its own app).
    Returns the exit status: 0, or 1 when the server could not start (the port is taken, say)."""
    try:
        sock = _listen(host, port)
    except OSError as error:
        log.error("validator-gate could not listen on %s:%s: %s", host, port, error)
        return 1
    if workers <= 1:
        return _run_one(make_app, sock, access_log)
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: its own loop, its own app and store connections
            status = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                status = _run_one(make_app, sock, access_log)
            finally:
                os._exit(status)
        children.append(pid)
    sock.close()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                break
            except ChildProcessError:
                code = 0
                break
            except InterruptedError:
                continue
        status = max(status, os.waitstatus_to_exitcode(code) if code else 0)
    sys.stdout.flush()
    return 1 if status else 0
