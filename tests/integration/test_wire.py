"""The multiplexed read connection against real redis-servers: auth, db, unix socket, the read
transaction (MULTI/EXEC) on every deployment, and its redirections on a Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis

from tests.redis_cluster import Backend, LocalCluster
from tests.redis_servers import RedisProcess, free_port
from validator import Admin, Reason, Store, StoreUnavailable, Validator
from validator.store import UnreadableRecord
from validator.store import wire as wire_module
from validator.store.cluster import ClusterWires
from validator.store.layout import slot_of
from validator.store.wire import Multiplexer, WireError, _transaction_outcome, pack_transaction

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


async def test_a_transactions_callbacks_get_its_outcome_however_it_settles(redis_url: str) -> None:
    """`transaction_now`'s future runs its done callbacks as its reply is parsed (issue 26): each
    still gets the outcome once, a failed connection's error and a cancellation included, and
    an awaiting task is woken as for any future."""
    wire = Multiplexer(redis_url, timeout=2, connect_timeout=2)
    await wire.execute("PING")
    packed = pack_transaction(("ECHO", "a"), ("ECHO", "b"))
    seen: list[object] = []
    all_seen = asyncio.Event()

    def outcome(future: asyncio.Future[Any]) -> None:
        seen.append("cancelled" if future.cancelled() else future.exception() or future.result())
        if len(seen) == 3:
            all_seen.set()

    replied = wire.transaction_now(packed, 2)
    assert replied is not None
    replied.add_done_callback(outcome)
    assert await asyncio.wait_for(replied, 5) == ["a", "b"]
    assert seen == [["a", "b"]]
    cancelled = wire.transaction_now(packed, 2)
    assert cancelled is not None
    cancelled.add_done_callback(outcome)
    cancelled.remove_done_callback(outcome)
    cancelled.add_done_callback(outcome)
    cancelled.cancel()
    await wire.execute("PING")  # its reply comes after the cancelled one's: skipped, no callback again
    failed = wire.transaction_now(packed, 2)
    assert failed is not None
    failed.add_done_callback(outcome)
    wire.close()
    await asyncio.wait_for(all_seen.wait(), 5)  # scheduled, as a plain future's callbacks are, on a close
    assert seen[1:] == ["cancelled", seen[2]]
    assert isinstance(seen[2], WireError) and seen[2].kind == "closed"


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


# ------------------------------------------------------------------ reads as MULTI/EXEC transactions


async def command_calls(backend: Backend, *names: str) -> int:
    """Calls of the commands `names` on every write node since the last reset, summed."""
    total = 0
    for client in backend.write_nodes():
        stats = await client.info("commandstats")
        total += sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names)
        await client.config_resetstat()
        await client.aclose()
    return total


@pytest.mark.timeout(60)
async def test_a_miss_is_one_transaction_on_every_deployment(backend: Backend) -> None:
    admin = Admin.from_url(backend.url, secret="w")
    await admin.init()
    await admin.set_domains(TOKEN, ["app.example.com"])
    await admin.enable(TOKEN, "domain")
    await admin.close()
    async with Validator.from_url(backend.url, secret="w", timeout=2, connect_timeout=2) as validator:
        await validator.check("warm-up: connect to the node")
        # Fast path (`read_now`) and general path (`Store.read`), known and unknown token.
        await command_calls(backend)  # reset
        listed = await validator.check(TOKEN, origin="https://app.example.com")
        restrictions = await validator.store.read(validator.store.token_hash(TOKEN))
        unknown = await validator.store.read(validator.store.token_hash("tok_never_stored"))
        assert listed.reason is Reason.DOMAIN_LISTED
        assert restrictions is not None and restrictions.domains == ["app.example.com"]
        assert unknown is None
        calls = {name: await command_calls(backend, name) for name in ("exec", "evalsha", "eval")}
    assert calls == {"exec": 3, "evalsha": 0, "eval": 0}


@pytest.mark.timeout(30)
async def test_a_script_flush_does_not_matter_to_reads(redis_url: str) -> None:
    assert await stored_and_read(redis_url) == ["app.example.com"]
    store = Store.from_url(redis_url, secret="w")
    await store.client.script_flush()
    restrictions = await store.read(store.token_hash(TOKEN))
    assert restrictions is not None and restrictions.domains == ["app.example.com"]
    assert await store.client.script_exists(store._read.sha) == [False]  # not loaded again
    await store.close()


@pytest.mark.timeout(30)
async def test_a_wrong_type_inside_the_transaction_is_an_unreadable_record(redis_url: str) -> None:
    store = Store.from_url(redis_url, secret="w")
    meta, domains, _ = store.keys(store.token_hash(TOKEN))
    await store.client.hset(meta, mapping={"d": "1", "i": "0", "v": "1"})
    await store.client.set(domains, "not a set")
    with pytest.raises(UnreadableRecord) as error:
        await store.read(store.token_hash(TOKEN))
    assert "WRONGTYPE" in str(error.value)
    await store.close()


def test_transaction_outcomes() -> None:
    ok, queued = "OK", "QUEUED"
    ask = hiredis.ReplyError("ASK 866 127.0.0.1:7001")
    moved = hiredis.ReplyError("MOVED 866 127.0.0.1:7001")
    abort = hiredis.ReplyError("EXECABORT Transaction discarded because of previous errors.")
    assert _transaction_outcome([ok, queued, queued, [["v", "1"], []]]) == [["v", "1"], []]
    cases: dict[str, list[Any]] = {
        "MOVED 866 127.0.0.1:7001": [ok, moved, moved, moved, abort],
        "ASK 866 127.0.0.1:7001": [ok, ask, ask, ask, abort],
        "TRYAGAIN keys split by a slot migration (ASK 866 127.0.0.1:7001 for some)": [
            ok,
            queued,
            ask,
            queued,
            abort,
        ],
        "TRYAGAIN Multiple keys request during rehashing of slot": [
            ok,
            queued,
            queued,
            hiredis.ReplyError("TRYAGAIN Multiple keys request during rehashing of slot"),
        ],
        "NOAUTH Authentication required.": [
            hiredis.ReplyError("NOAUTH Authentication required."),
            hiredis.ReplyError("NOAUTH x"),
            hiredis.ReplyError("ERR EXEC without MULTI"),
        ],
        "WRONGTYPE Operation against a key": [
            ok,
            queued,
            queued,
            [[], hiredis.ReplyError("WRONGTYPE Operation against a key")],
        ],
    }
    for expected, replies in cases.items():
        outcome = _transaction_outcome(replies)
        assert isinstance(outcome, WireError) and outcome.kind == "reply"
        assert str(outcome) == expected


@pytest.mark.timeout(60)
async def test_a_moved_inside_the_transaction_is_followed_and_fixes_the_route(
    redis_cluster: LocalCluster,
) -> None:
    backend = Backend("cluster", redis_cluster.url, lambda: [node.port for node in redis_cluster.primaries()])
    backend.flushall()
    admin = Admin.from_url(backend.url, secret="w")
    await admin.init()
    await admin.set_ips(TOKEN, ["203.0.113.7"])
    await admin.enable(TOKEN, "ip")
    await admin.close()
    async with Validator.from_url(backend.url, secret="w", timeout=2, connect_timeout=2) as validator:
        store = validator.store
        wires = store._wires
        assert isinstance(wires, ClusterWires)
        token_hash = store.token_hash(TOKEN)
        slot = slot_of(token_hash)
        right = wires.for_tag(token_hash)
        assert right is not None, "the layout is known once connected"
        wrong = next(wires._node(node) for node in wires._layout or {} if wires._node(node) is not right)
        refusals: list[str] = []
        outcome = wire_module._transaction_outcome

        def spy(replies: list[object]) -> object:
            result = outcome(replies)
            if isinstance(result, WireError):
                refusals.append(str(result))
            return result

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(wire_module, "_transaction_outcome", spy)
            for read in ("general", "fast"):
                wires._by_slot[slot] = wrong
                if read == "general":
                    restrictions = await store.read(token_hash)
                    assert restrictions is not None and restrictions.ips == ["203.0.113.7"]
                else:
                    validator.cache.clear()
                    decision = await validator.check(TOKEN, client_ip="203.0.113.7")
                    assert decision.reason is Reason.IP_LISTED
                assert wires._by_slot[slot] is right, read
        assert len(refusals) == 2 and all(text.startswith(f"MOVED {slot} ") for text in refusals)


@pytest.mark.timeout(90)
# A redis-py connection replaced during the slot's move is now and then left to the garbage
# collector unclosed (a ResourceWarning; seen once in three full runs). Which side drops it,
# redis-py's slot patching or a temporary node of validator/store/migration.py, is not pinned down.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_migrating_slot_is_read_by_the_transaction_redirects(redis_cluster: LocalCluster) -> None:
    backend = Backend("cluster", redis_cluster.url, lambda: [node.port for node in redis_cluster.primaries()])
    backend.flushall()
    admin = Admin.from_url(backend.url, secret="w")
    await admin.init()
    await admin.set_ips(TOKEN, ["203.0.113.7"])  # no domain set: its key does not exist
    await admin.enable(TOKEN, "ip")
    await admin.close()
    async with Validator.from_url(backend.url, secret="w", timeout=2, connect_timeout=2) as validator:
        store = validator.store
        token_hash = store.token_hash(TOKEN)
        slot = slot_of(token_hash)
        meta, _, ips = store.keys(token_hash)
        ports = [node.port for node in redis_cluster.primaries()]
        nodes = {port: aioredis.Redis(port=port, decode_responses=True) for port in ports}
        try:
            counts = {port: await nodes[port].cluster("COUNTKEYSINSLOT", slot) for port in ports}
            owner = next(port for port, count in counts.items() if count > 0)
            target = next(port for port in ports if port != owner)
            ids = {port: await nodes[port].cluster("MYID") for port in (owner, target)}
            await nodes[target].execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner]
            )
            await nodes[owner].execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target]
            )
            refusals: list[str] = []
            outcome = wire_module._transaction_outcome

            def spy(replies: list[object]) -> object:
                result = outcome(replies)
                if isinstance(result, WireError):
                    refusals.append(str(result).split(" ", 1)[0])
                return result

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(wire_module, "_transaction_outcome", spy)
                # Split: meta and IPs on the source, the domain set nowhere (TRYAGAIN).
                first = await store.read(token_hash)
                # Every key on the target (ASK).
                await nodes[owner].execute_command(  # type: ignore[no-untyped-call]
                    "MIGRATE",
                    "127.0.0.1",
                    target,
                    "",
                    0,
                    5000,
                    "KEYS",
                    meta,
                    ips,
                    store.history_key(token_hash),
                )
                second = await store.read(token_hash)
            for restrictions in (first, second):
                assert restrictions is not None and restrictions.ip_enabled
                assert restrictions.ips == ["203.0.113.7"]
            assert refusals == ["TRYAGAIN", "ASK"]
        finally:
            # The migration ends on the target: a resharding as any other.
            for port in ports:
                with contextlib.suppress(Exception):
                    await nodes[port].execute_command(  # type: ignore[no-untyped-call]
                        "CLUSTER", "SETSLOT", slot, "NODE", ids[target]
                    )
            for client in nodes.values():
                await client.aclose()


@pytest.mark.promise("P-SINGLE-FLIGHT")
@pytest.mark.timeout(30)
async def test_cold_checks_beyond_the_load_bound_queue_for_a_fast_read(redis_url: str) -> None:
    # More distinct cold tokens at once than `max_concurrent_loads`: the fast reads in flight
    # never exceed the bound, the others wait for a slot (not the general path), and all finish.
    tokens = [f"tok_queue_{n}" for n in range(50)]
    admin = Admin.from_url(redis_url, secret="w")
    await admin.init()
    for token in tokens:
        await admin.set_domains(token, ["app.example.com"])
    await admin.close()
    validator = Validator.from_url(redis_url, secret="w", max_concurrent_loads=4)
    async with validator:
        widest = 0
        start_read = validator.reads.start

        def watched(token_hash: str, shard: Any, settle: Any) -> Any:
            nonlocal widest
            read = start_read(token_hash, shard, settle)
            widest = max(widest, validator.reads.in_flight)
            return read

        general = 0
        read = validator.reads.read

        async def counted(token_hash: str, shard: Any) -> Any:
            nonlocal general
            general += 1
            return await read(token_hash, shard)

        validator.reads.start = watched  # type: ignore[method-assign]
        validator.reads.read = counted  # type: ignore[method-assign]
        await validator.check(tokens[0], origin="https://app.example.com")  # connects the wire
        validator.cache.clear()
        general = 0
        decisions = await asyncio.wait_for(
            asyncio.gather(*(validator.check(t, origin="https://app.example.com") for t in tokens)), 10
        )
        assert all(d.allowed for d in decisions)
        assert widest == 4
        assert general == 0
        assert validator.reads.in_flight == 0 and not validator.reads.queued


def _packed(*commands: tuple[str | int, ...]) -> bytes:
    return b"".join(hiredis.pack_command(command) for command in commands)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
async def test_send_packed_resolves_one_future_with_every_reply_in_order(redis_url: str) -> None:
    wire = Multiplexer(redis_url, timeout=2, connect_timeout=2)
    try:
        assert wire.send_packed(_packed(("PING",)), 1) is None  # not connected: nothing queued
        assert await asyncio.wait_for(wire.execute("DEL", "packed:list"), 5) in (0, 1)
        # Interleaved with single commands and a transaction: each gets its own replies.
        before = wire.send_now("ECHO", "before")
        packed = wire.send_packed(
            _packed(("RPUSH", "packed:list", "a"), ("RPUSH", "packed:list", "b"), ("ECHO", "x")), 3
        )
        after = wire.send_now("ECHO", "after")
        assert before is not None and packed is not None and after is not None
        assert await asyncio.wait_for(packed, 5) == [1, 2, "x"]
        assert (await before, await after) == ("before", "after")
        assert await wire.execute("LRANGE", "packed:list", 0, -1) == ["a", "b"]
        with pytest.raises(ValueError):
            wire.send_packed(b"", 0)
    finally:
        wire.close()


@pytest.mark.timeout(30)
async def test_send_packed_an_error_reply_takes_only_its_command_place(redis_url: str) -> None:
    wire = Multiplexer(redis_url, timeout=2, connect_timeout=2)
    try:
        await asyncio.wait_for(wire.execute("SET", "packed:string", "v"), 5)
        packed = wire.send_packed(
            _packed(("ECHO", "a"), ("LPUSH", "packed:string", "x"), ("NOSUCHCOMMAND",), ("ECHO", "b")), 4
        )
        assert packed is not None
        first, wrong_type, unknown, last = await asyncio.wait_for(packed, 5)
        assert (first, last) == ("a", "b")
        assert isinstance(wrong_type, WireError) and wrong_type.kind == "reply"
        assert str(wrong_type).startswith("WRONGTYPE")
        assert isinstance(unknown, WireError) and unknown.kind == "reply"
        assert await wire.execute("ECHO", "still up") == "still up"
    finally:
        wire.close()


@pytest.mark.timeout(30)
async def test_send_packed_fails_as_a_whole_when_the_connection_is_lost() -> None:
    server = RedisProcess()
    server.start()
    wire = Multiplexer(server.url, timeout=2, connect_timeout=2)
    try:
        assert await asyncio.wait_for(wire.execute("PING"), 5) == "PONG"
        # The server closes the connection (CLIENT KILL of itself) before the later replies.
        packed = wire.send_packed(
            _packed(("ECHO", "a"), ("CLIENT", "KILL", "SKIPME", "no"), ("ECHO", "b")), 3
        )
        assert packed is not None
        with pytest.raises(WireError) as lost:
            await asyncio.wait_for(packed, 5)
        assert lost.value.kind == "connection"
        # The next request connects again.
        assert await asyncio.wait_for(wire.execute("PING"), 5) == "PONG"
    finally:
        wire.close()
        server.cleanup()
