"""The multiplexed read connection against real redis-servers: auth, db, unix socket, scripts."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from tests.redis_servers import RedisProcess, free_port
from validator import Admin, Store, StoreUnavailable
from validator.store.wire import Multiplexer, WireError

TOKEN = "tok_wire"


@pytest.fixture
def private_server() -> Iterator[RedisProcess]:
    process = RedisProcess("--requirepass", "s3cret", "--unixsocket", "redis.sock", "--unixsocketperm", "700")
    process.start()
    yield process
    process.cleanup()


async def stored_and_read(url: str) -> list[str]:
    admin = Admin.from_url(url, secret="w")
    await admin.init()
    await admin.set_domains(TOKEN, ["app.example.com"])
    await admin.close()
    store = Store.from_url(url, secret="w")
    restrictions = await store.read(store.token_hash(TOKEN))
    await store.close()
    assert restrictions is not None
    return restrictions.domains


@pytest.mark.parametrize("db", [0, 3])
async def test_password_and_database(private_server: RedisProcess, db: int) -> None:
    url = f"redis://:s3cret@127.0.0.1:{private_server.port}/{db}"
    assert await stored_and_read(url) == ["app.example.com"]
    raw = aioredis.Redis.from_url(url)
    assert await raw.dbsize() > 0
    await raw.aclose()


async def test_unix_socket(private_server: RedisProcess) -> None:
    url = f"unix://:s3cret@{private_server.dir / 'redis.sock'}?db=2"
    assert await stored_and_read(url) == ["app.example.com"]


async def test_wrong_password_is_store_unavailable(private_server: RedisProcess) -> None:
    store = Store.from_url(f"redis://:wrong@127.0.0.1:{private_server.port}/0", secret="w")
    with pytest.raises(StoreUnavailable):
        await store.read(store.token_hash(TOKEN))
    await store.close()


async def test_scripts_flushed_are_loaded_again(redis_url: str) -> None:
    assert await stored_and_read(redis_url) == ["app.example.com"]
    store = Store.from_url(redis_url, secret="w")
    await store.read(store.token_hash(TOKEN))
    await store.client.script_flush()
    restrictions = await store.read(store.token_hash(TOKEN))
    assert restrictions is not None and restrictions.domains == ["app.example.com"]
    await store.close()


async def test_many_concurrent_reads_share_one_connection(redis_url: str) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    before = len(await raw.client_list())
    wire = Multiplexer(redis_url, timeout=2, connect_timeout=2)
    try:
        replies = await asyncio.wait_for(
            asyncio.gather(*(wire.execute("ECHO", str(n)) for n in range(2000))), 10
        )
        assert replies == [str(n) for n in range(2000)]
        assert len(await raw.client_list()) == before + 1
    finally:
        wire.close()
        await raw.aclose()


async def test_error_replies_reach_only_their_request(redis_url: str) -> None:
    wire = Multiplexer(redis_url, timeout=2, connect_timeout=2)
    results: list[object] = await asyncio.gather(
        wire.execute("ECHO", "a"),
        wire.execute("NOSUCHCOMMAND"),
        wire.execute("ECHO", "b"),
        return_exceptions=True,
    )
    good, bad, after = results
    assert (good, after) == ("a", "b")
    assert isinstance(bad, WireError)
    wire.close()


async def test_a_stuck_server_fails_every_queued_request_after_the_timeout() -> None:
    server = RedisProcess()
    server.start()
    wire = Multiplexer(server.url, timeout=0.2, connect_timeout=0.2)
    try:
        assert await wire.execute("PING") == "PONG"
        server.signal(signal.SIGSTOP)
        results = await asyncio.wait_for(
            asyncio.gather(*(wire.execute("PING") for _ in range(50)), return_exceptions=True), 5
        )
        assert all(isinstance(r, WireError) for r in results)
        server.signal(signal.SIGCONT)
        assert await asyncio.wait_for(wire.execute("PING"), 5) == "PONG"
    finally:
        wire.close()
        server.cleanup()


async def test_closed_while_connecting_leaves_nothing_open(redis_url: str) -> None:
    wire = Multiplexer(redis_url, timeout=1.0, connect_timeout=1.0)
    connecting = asyncio.ensure_future(wire.execute("PING"))
    await asyncio.sleep(0)  # let the connection attempt start
    wire.close(WireError("the node left the cluster layout", "left"))
    with pytest.raises(WireError) as caught:
        await asyncio.wait_for(connecting, timeout=5)
    assert caught.value.kind == "left"
    assert wire._protocol is None
    # And it stays closed: no reconnection behind its owner's back.
    with pytest.raises(WireError) as again:
        await asyncio.wait_for(wire.execute("PING"), timeout=5)
    assert again.value.kind == "left"
    assert wire.send_now("PING") is None


async def test_error_kinds_tell_a_reply_from_a_dead_server(redis_url: str) -> None:
    wire = Multiplexer(redis_url, timeout=1.0, connect_timeout=1.0)
    with pytest.raises(WireError) as reply:
        await asyncio.wait_for(wire.execute("NOSUCHCOMMAND"), timeout=5)
    assert reply.value.kind == "reply" and str(reply.value).startswith("ERR")
    wire.close()
    refused = Multiplexer(f"redis://127.0.0.1:{free_port()}", timeout=1.0, connect_timeout=1.0)
    with pytest.raises(WireError) as caught:
        await asyncio.wait_for(refused.execute("PING"), timeout=5)
    assert caught.value.kind == "connection"
    refused.close()


async def test_a_busy_loop_before_the_write_is_not_a_redis_timeout(redis_url: str) -> None:
    wire = Multiplexer(redis_url, timeout=0.2, connect_timeout=1.0)
    assert await asyncio.wait_for(wire.execute("PING"), timeout=5) == "PONG"
    queued = wire.send_now("PING")
    assert queued is not None
    # The loop is kept busy past the timeout after the request was queued but before it was
    # written (a burst of tasks on a starved CPU): the clock starts at the write.
    time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop is the point
    assert await asyncio.wait_for(queued, timeout=5) == "PONG"
    wire.close()
