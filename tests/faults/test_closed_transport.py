"""A transport closed under a read surfaces as a store failure, never as another exception.

Issue 17, item 5: under uvloop, writing to a connection that was closed meanwhile raises
`RuntimeError` ("unable to perform operation on <TCPTransport closed=True>"), and through the
redis-py fallback of a cluster read that reached `check()` as a 500. Each read path is driven here
with its transport closed: the multiplexed fast read, the general read, the redis-py fallback of a
redirected read, and the wiped-store marker read. On every deployment, and once under uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
import uvloop
from redis.asyncio.connection import AbstractConnection

from tests.redis_cluster import Backend
from tests.redis_servers import RedisProcess
from validator import Admin, Restrictions, StoreUnavailable, Validator
from validator.store.wire import Multiplexer, WireError
from validator.web.middleware import TokenAccessMiddleware

pytestmark = [pytest.mark.promise("P-NO-UNHANDLED-ERROR")]

SECRET = "closed-transport-secret"
CLIENT_IP = "198.51.100.20"
TOKENS = [f"tok_closed_{n}" for n in range(12)]  # on a cluster: in every primary's slots
CLOSED = "unable to perform operation on <TCPTransport closed=True reading=False 0x7f0c>"


def closed(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(CLOSED)


async def failing_future(*args: Any, **kwargs: Any) -> Any:
    raise WireError("connection lost", "connection")


async def seeded(url: str) -> Validator:
    admin = Admin.from_url(url, secret=SECRET)
    await admin.init()
    for token in TOKENS:
        await admin.put(token, Restrictions(ip_enabled=True, ips=[CLIENT_IP]))
    await admin.close()
    validator = Validator.from_url(url, secret=SECRET, timeout=0.5, breaker_threshold=1000)
    await validator.connect()
    await validator.sync()  # every node subscribed: reads take the multiplexed fast path
    return validator


async def assert_every_check_fails_closed(validator: Validator) -> None:
    for token in TOKENS:
        with pytest.raises(StoreUnavailable):
            await validator.check(token, client_ip=CLIENT_IP)


@pytest.mark.timeout(60)
async def test_a_fast_read_whose_transport_closed_reads_the_general_way(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    validator = await seeded(backend.url)
    try:
        monkeypatch.setattr(Multiplexer, "send_now", closed)
        monkeypatch.setattr(Multiplexer, "transaction_now", closed)
        for token in TOKENS:
            assert (await validator.check(token, client_ip=CLIENT_IP)).allowed
    finally:
        await validator.close()


@pytest.mark.timeout(60)
async def test_a_redirected_read_whose_fallback_transport_closed_is_a_store_failure(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    validator = await seeded(backend.url)
    try:
        # The multiplexed connection is lost (Cluster and Sentinel then ask redis-py), and
        # redis-py's own connections write to closed transports.
        monkeypatch.setattr(Multiplexer, "execute", failing_future)
        monkeypatch.setattr(Multiplexer, "send_now", lambda self, *a: asyncio.ensure_future(failing_future()))
        monkeypatch.setattr(Multiplexer, "transaction", failing_future)
        monkeypatch.setattr(
            Multiplexer, "transaction_now", lambda self, *a: asyncio.ensure_future(failing_future())
        )
        monkeypatch.setattr(AbstractConnection, "send_packed_command", closed)
        await assert_every_check_fails_closed(validator)
    finally:
        monkeypatch.undo()
        await validator.close()


@pytest.mark.timeout(60)
async def test_a_marker_read_whose_transport_closed_is_a_store_failure(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    validator = await seeded(backend.url)
    try:
        validator.shards.marker_changed()  # as after a reconnect: the marker is read first
        monkeypatch.setattr(AbstractConnection, "send_packed_command", closed)
        await assert_every_check_fails_closed(validator)
    finally:
        monkeypatch.undo()
        await validator.close()


@pytest.mark.timeout(60)
async def test_the_middleware_answers_503_not_500(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    validator = await seeded(backend.url)
    try:
        validator.shards.marker_changed()
        monkeypatch.setattr(Multiplexer, "send_now", closed)
        monkeypatch.setattr(Multiplexer, "transaction_now", closed)
        monkeypatch.setattr(AbstractConnection, "send_packed_command", closed)
        statuses: list[int] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise AssertionError("the request went through")

        middleware = TokenAccessMiddleware(app, validator=validator)

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [(b"authorization", f"Bearer {TOKENS[0]}".encode())],
            "client": (CLIENT_IP, 40000),
            "server": ("127.0.0.1", 8000),
            "scheme": "http",
            "http_version": "1.1",
            "root_path": "",
        }
        await middleware(scope, receive, send)
        assert statuses == [503]
    finally:
        monkeypatch.undo()
        await validator.close()


@pytest.mark.timeout(60)
def test_under_uvloop(redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        client_url = redis_server.url
        validator = await seeded(client_url)
        try:
            validator.shards.marker_changed()
            monkeypatch.setattr(Multiplexer, "send_now", closed)
            monkeypatch.setattr(Multiplexer, "transaction_now", closed)
            monkeypatch.setattr(AbstractConnection, "send_packed_command", closed)
            await assert_every_check_fails_closed(validator)
        finally:
            monkeypatch.undo()
            await validator.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


@pytest.mark.timeout(60)
async def test_a_closed_transport_is_reported_as_a_store_failure_without_a_traceback(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    validator = await seeded(redis_server.url)
    try:
        validator.shards.marker_changed()
        monkeypatch.setattr(AbstractConnection, "send_packed_command", closed)
        with pytest.raises(StoreUnavailable, match="TCPTransport closed"):
            await validator.check(TOKENS[0], client_ip=CLIENT_IP)
        assert not [r for r in caplog.records if r.exc_info], "logged as an unexpected error"
    finally:
        monkeypatch.undo()
        await validator.close()
