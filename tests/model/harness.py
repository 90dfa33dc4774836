"""The world the stateful test drives: one redis-server, the admin CLI (in process and as a
subprocess), requests through the ASGI middleware, a clock the caches and breakers read, and a
capture of every log record.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import validator
import validator.model
from tests.redis_servers import RedisProcess, free_port
from validator.admin import cli
from validator.web.middleware import Message, Scope, TokenAccessMiddleware

SECRET = "model-secret"
READ_TIMEOUT = 0.25
# Short real settings, so that a sequence crosses every period many times.
TIMING: dict[str, float] = {
    "ttl": 1.0,
    "unknown_ttl": 1.0,
    "max_stale": 1.0,
    "incoherent_ttl": 0.3,
    "ping_interval": 0.2,
    "ping_timeout": 0.3,
    "breaker_reset": 0.2,
    "marker_interval": 0.5,
}
# An entry read before a change may serve (fresh, then stale-if-error) at most this long after it.
STALE_WINDOW = TIMING["ttl"] + TIMING["max_stale"]
TREE = Path(validator.__file__).resolve().parent.parent


class Clock:
    """`time.monotonic()` plus an offset that the test advances: the caches and breakers of the
    validators read it (they take a `clock`), so time can pass beyond `ttl` without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def wall(self) -> float:
        """The wall clock (`time.time()`) moved by the same offset: what entries expire by in the
        validators of this process once `follow_wall_clock` installed it. The Redis server's
        clock cannot be moved: this one is never behind it, so an entry lapses for validators
        at or before Redis sweeps it."""
        return time.time() + self.offset


# What `validator.model.wall_clock` was before any machine moved it.
REAL_WALL_CLOCK = validator.model.wall_clock


def follow_wall_clock(clock: Clock | None) -> None:
    """Make `validator.model.wall_clock` (read by validators, the cache and the in-process CLI's
    `check`) follow `clock`'s offset; None: put the real one back."""
    validator.model.wall_clock = REAL_WALL_CLOCK if clock is None else clock.wall


def inject_clock(target: Any, clock: Clock) -> bool:
    """Make the validator's cache and breaker read `clock`; False if either takes no clock."""
    found = (getattr(target, "cache", None), getattr(target, "breaker", None))
    parts = [part for part in found if part is not None]
    if len(parts) < 2 or not all(hasattr(part, "_clock") for part in parts):
        return False
    for part in parts:
        part._clock = clock
    return True


class GarbageServer:
    """A TCP port that answers anything with an HTTP error: a store URL pointing at a non-Redis
    port."""

    def __init__(self) -> None:
        self.port = free_port()
        self._socket = socket.create_server(("127.0.0.1", self.port))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="garbage-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(1.0)
                with contextlib.suppress(OSError):
                    connection.recv(4096)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


class World:
    """What outlives one sequence: the redis-server (restarted on the same port), a scratch
    directory, the garbage port."""

    def __init__(self, scratch: Path) -> None:
        self.server = RedisProcess()
        self.server.start()
        self.frozen = False
        self.scratch = scratch
        self.garbage = GarbageServer()
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TREE), os.environ.get("PYTHONPATH", "")]),
            "VALIDATOR_SECRET": SECRET,
        }
        self.env.pop("VALIDATOR_STORE_URL", None)

    @property
    def url(self) -> str:
        return self.server.url

    def ensure_up(self) -> None:
        """A running, unfrozen server (with whatever data it has) for the next sequence."""
        if self.frozen:
            self.server.signal(signal.SIGCONT)
            self.frozen = False
        if not self.server.running:
            self.server.discard_data()
            self.server.start()

    def close(self) -> None:
        if self.frozen:
            self.server.signal(signal.SIGCONT)
        self.server.cleanup()
        self.garbage.close()


@contextlib.contextmanager
def secret_in_environment() -> Iterator[None]:
    before = os.environ.get("VALIDATOR_SECRET")
    os.environ["VALIDATOR_SECRET"] = SECRET
    try:
        yield
    finally:
        if before is None:
            del os.environ["VALIDATOR_SECRET"]
        else:
            os.environ["VALIDATOR_SECRET"] = before


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str
    how: str

    def one_line_error(self) -> bool:
        """No traceback, no asyncio noise: what reaches a user is lines of its own."""
        noise = ("Traceback", "Task exception was never retrieved", "Exception ignored", "Error in sys.")
        return not any(marker in self.err or marker in self.out for marker in noise)


def run_cli_in_process(args: list[str]) -> CliResult:
    """`validator-admin ARGS` through `validator.admin.cli.main` (call it off the event loop's thread:
    it runs its own loop)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(args)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return CliResult(code, out.getvalue(), err.getvalue(), "in process")


async def run_cli_subprocess(world: World, args: list[str], timeout: float = 60.0) -> CliResult:
    """`python -m validator ARGS` in a process of its own, on this tree."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "validator",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=world.env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    code = process.returncode if process.returncode is not None else -1
    return CliResult(code, out.decode(errors="replace"), err.decode(errors="replace"), "subprocess")


# ------------------------------------------------------------------------------------ middleware


def token_headers(placement: str, first: str, second: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and query string carrying `first` (and `second`, for a two-slot placement) as a
    client would send them: header bytes UTF-8, query values percent-encoded UTF-8."""
    headers: list[tuple[bytes, bytes]] = []
    query: list[str] = []
    for slot, token in zip(placement.split("+"), (first, second), strict=False):
        if slot == "bearer":
            headers.append((b"authorization", b"Bearer " + token.encode()))
        elif slot == "header":
            headers.append((b"x-api-key", token.encode()))
        else:
            query.append("api_key=" + quote(token, safe=""))
    return headers, "&".join(query).encode("ascii")


async def _app(scope: Scope, receive: Any, send: Any) -> None:
    state = scope.get("state") or {}
    scope["model.seen"] = state.get("api_token")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def middleware(target: validator.Validator) -> TokenAccessMiddleware:
    return TokenAccessMiddleware(_app, validator=target)


async def asgi_request(
    app: TokenAccessMiddleware,
    headers: list[tuple[bytes, bytes]],
    query: bytes,
    client_ip: str | None,
) -> tuple[int, str | None]:
    """One GET through the middleware: the status, and the token the app was given."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/hello",
        "raw_path": b"/v1/hello",
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": (client_ip, 50000) if client_ip else None,
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(int(m["status"]) for m in sent if m["type"] == "http.response.start")
    seen = scope.get("model.seen")
    return status, seen if isinstance(seen, str) else None


# -------------------------------------------------------------------------------------- logging


class LogCapture(logging.Handler):
    """Every record that reaches the root logger while installed, the library's own down to
    DEBUG (its denial lines among them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def install(self) -> None:
        library = logging.getLogger("validator")
        self._level = library.level
        library.setLevel(logging.DEBUG)
        logging.getLogger().addHandler(self)

    def remove(self) -> None:
        logging.getLogger().removeHandler(self)
        logging.getLogger("validator").setLevel(self._level)

    def text(self, record: logging.LogRecord) -> str:
        try:
            return record.getMessage() + (f" {record.exc_info[1]!r}" if record.exc_info else "")
        except Exception as error:  # a record that cannot be formatted is still text to search
            return f"{record.msg!r} {record.args!r} {error!r}"
