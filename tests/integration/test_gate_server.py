"""The gate's own HTTP server (validator/web/gate_server.py) on a real socket, with raw bytes: kept-
alive connections, pipelined requests answered in order (one of them waiting on the app), HEAD,
HTTP/1.0, and what it does with input it must not pass on: malformed requests (400), an oversized
head (431) or body (413), an app that fails (500). None of those reaches the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from validator.web import gate_server
from validator.web.types import Receive, Scope, Send

pytestmark = [pytest.mark.timeout(30)]


class App:
    """Answers `200 <path>`; `/wait` waits for `release`; `/fail` raises; records every path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        path = scope["path"]
        self.paths.append(path)
        if path == "/wait":
            self.waiting.set()
            await self.release.wait()
        if path == "/fail":
            raise RuntimeError("the app failed")
        body = (path + ("?" + scope["query_string"].decode() if scope["query_string"] else "")).encode()
        headers = [(b"content-length", str(len(body)).encode()), (b"x-method", scope["method"].encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server() -> AsyncIterator[tuple[App, int]]:
    app = App()
    sock = gate_server._listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(gate_server._serve(app, sock, False, stop))
    # Ready once it accepts a connection and answers.
    for _ in range(200):
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        break
    yield app, port
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


async def exchange(port: int, data: bytes, responses: int = 1) -> tuple[list[bytes], bool]:
    """Send `data`, read `responses` responses (head and body by content-length); whether the
    server closed the connection after them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answers = []
    try:
        for _ in range(responses):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            answers.append(head + await reader.readexactly(length))
        closed = await asyncio.wait_for(reader.read(1), 0.5) == b""
    except TimeoutError:
        closed = False
    finally:
        writer.close()
    return answers, closed


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_kept_alive_and_pipelined_in_order(server: tuple[App, int]) -> None:
    app, port = server
    data = b"GET /a?x=1 HTTP/1.1\r\nHost: g\r\n\r\nGET /b HTTP/1.1\r\nHost: g\r\n\r\n"
    answers, closed = await exchange(port, data, 2)
    assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in answers] == [b"/a?x=1", b"/b"]
    assert not closed
    assert app.paths == ["/a", "/b"]


async def test_a_waiting_request_keeps_the_order(server: tuple[App, int]) -> None:
    app, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /wait HTTP/1.1\r\nHost: g\r\n\r\nGET /after HTTP/1.1\r\nHost: g\r\n\r\n")
    await app.waiting.wait()
    app.release.set()
    first = await reader.readuntil(b"/wait")
    second = await reader.readuntil(b"/after")
    writer.close()
    assert status(first) == status(second) == 200
    assert app.paths == ["/wait", "/after"]


async def test_head_has_no_body_and_http_1_0_closes(server: tuple[App, int]) -> None:
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD /h HTTP/1.0\r\n\r\n")
    reply = await reader.read()  # until the server closes
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in reply
    assert reply.endswith(b"\r\n\r\n")  # content-length 2, no body


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost g\r\n\r\n", 400, id="header without colon"),
        pytest.param(b"GET /\x01 HTTP/1.1\r\n\r\n", 400, id="control byte in the target"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 3, 400, id="TLS to plain HTTP"),
        pytest.param(b"GET / HTTP/1.1\r\nX: " + b"a" * (gate_server.MAX_HEAD + 10), 431, id="huge head"),
        pytest.param(
            b"GET / HTTP/1.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(gate_server.MAX_HEADERS + 1))
            + b"\r\n",
            431,
            id="too many headers",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (gate_server.MAX_BODY + 1)
            + b"x" * (gate_server.MAX_BODY + 1),
            413,
            id="body too large",
        ),
    ],
)
async def test_refused_input_never_reaches_the_app(
    server: tuple[App, int], data: bytes, expected: int
) -> None:
    app, port = server
    answers, closed = await exchange(port, data)
    assert [status(a) for a in answers] == [expected]
    assert closed
    assert app.paths == []


async def test_an_app_failure_is_a_500(server: tuple[App, int]) -> None:
    _app, port = server
    answers, closed = await exchange(port, b"GET /fail HTTP/1.1\r\nHost: g\r\n\r\n")
    assert [status(a) for a in answers] == [500]
    assert closed


async def test_an_upgrade_is_answered_as_a_check_and_the_connection_closed(server: tuple[App, int]) -> None:
    """A handshake (`Connection: upgrade`) is no tunnel here: its head is answered like any other
    request (never a 101), and whatever follows on the connection is not read."""
    app, port = server
    handshake = b"GET /ws HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    data = handshake + b"GET /next HTTP/1.1\r\n\r\n"
    answers, closed = await exchange(port, data)
    assert [status(a) for a in answers] == [200]
    assert closed
    assert app.paths == ["/ws"]
