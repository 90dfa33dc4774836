"""`validator-admin` tells the truth a validator would act on (docs/behaviour.md, "Hardened rules"), run as
a user runs it (`python -m validator` subprocesses) against real redis-servers.

Exit codes: 0 done, 1 nothing changed (or refused input, or check: denied), 2 usage or refused
(bad URL, store not initialised for this secret, eviction policy), 3 store unsound or unavailable.
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.test_cli_support import SECRET, Cli, Direct, write_lines
from tests.redis_servers import RedisProcess, free_port
from validator import ConfigurationError, Store, StoreUnavailable, Validator

TOKEN = "tok_truth_4d2a9c_do_not_print"
CLIENT_IP = "203.0.113.7"


@pytest.fixture
def cli(redis_url: str) -> Cli:
    """The CLI on the test's empty store, which nobody has initialised yet."""
    return Cli(redis_url)


def one_error_line(err: str) -> str:
    """The one line a failed command writes to stderr (besides warnings): no traceback."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if not line.startswith("validator-admin: warning:")]
    assert len(errors) == 1, err
    return errors[0]


# ------------------------------------------------------------------------------ show and check


READS = [
    pytest.param(("show", TOKEN), id="show"),
    pytest.param(("show", TOKEN, "--json"), id="show --json"),
    pytest.param(("check", TOKEN, "--ip", CLIENT_IP), id="check"),
    pytest.param(("check", TOKEN, "--origin", "https://app.example.com", "--json"), id="check --json"),
]


@pytest.mark.promise("P-ADMIN-TRUTH")
@pytest.mark.parametrize("args", READS)
def test_on_a_store_never_initialised_show_and_check_say_checks_fail_closed(
    cli: Cli, args: tuple[str, ...]
) -> None:
    result = cli(*args)
    assert result.code == 3
    assert result.out == ""  # never "allowed", never "unrestricted"
    line = one_error_line(result.err)
    assert "not initialised" in line
    assert "fail closed" in line
    assert "validator-admin init" in line


@pytest.mark.promise("P-ADMIN-TRUTH")
@pytest.mark.parametrize("args", READS)
def test_on_a_wiped_store_show_and_check_say_checks_fail_closed(
    cli: Cli, redis_url: str, args: tuple[str, ...]
) -> None:
    store = Direct(redis_url)
    store.init()
    store.given(TOKEN, ips=[CLIENT_IP], on=["ip"])
    redis.Redis.from_url(redis_url).flushall()
    result = cli(*args)
    assert result.code == 3
    assert result.out == ""
    assert "fail closed" in one_error_line(result.err)


@pytest.mark.promise("P-ADMIN-TRUTH")
@pytest.mark.parametrize("args", READS)
def test_with_another_secret_show_and_check_say_checks_fail_closed(
    cli: Cli, redis_url: str, args: tuple[str, ...]
) -> None:
    Direct(redis_url).init()
    result = cli(*args, VALIDATOR_SECRET="another-secret")
    assert result.code == 3
    assert result.out == ""
    line = one_error_line(result.err)
    assert "another secret" in line
    assert "fail closed" in line


@pytest.mark.promise("P-ADMIN-TRUTH")
async def test_what_show_and_check_report_is_what_a_validator_does(cli: Cli, redis_url: str) -> None:
    async with Validator.from_url(redis_url, secret=SECRET) as validator:
        with pytest.raises(StoreUnavailable):
            await validator.check(TOKEN, client_ip=CLIENT_IP)
        assert cli("check", TOKEN, "--ip", CLIENT_IP).code == 3
        assert cli("init").code == 0
        await validator.sync()
        assert (await validator.check(TOKEN, client_ip=CLIENT_IP)).allowed
        assert cli("check", TOKEN, "--ip", CLIENT_IP).code == 0


# ------------------------------------------------------------------------------ writes need init


WRITES = [
    pytest.param(("domains", "add", TOKEN, "app.example.com"), id="domains add"),
    pytest.param(("ips", "remove", TOKEN, CLIENT_IP), id="ips remove"),
    pytest.param(("enable", TOKEN, "ip"), id="enable"),
    pytest.param(("mode", TOKEN, "report"), id="mode"),
    pytest.param(("delete", TOKEN), id="delete"),
]


@pytest.mark.promise("P-MARKER-ON-PURPOSE")
@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.parametrize("args", WRITES)
def test_a_write_on_an_unmarked_store_exits_2_and_says_what_to_do(
    cli: Cli, redis_url: str, args: tuple[str, ...]
) -> None:
    result = cli(*args)
    assert result.code == 2
    line = one_error_line(result.err)
    assert "validator-admin init" in line
    assert "validator-admin import --restore FILE" in line
    assert redis.Redis.from_url(redis_url).dbsize() == 0


@pytest.mark.promise("P-MARKER-ON-PURPOSE")
@pytest.mark.promise("P-ADMIN-ERRORS")
def test_a_write_on_a_store_of_another_secret_exits_2(cli: Cli, redis_url: str) -> None:
    Direct(redis_url).init()
    result = cli("ips", "add", TOKEN, CLIENT_IP, VALIDATOR_SECRET="another-secret")
    assert result.code == 2
    assert "another secret" in one_error_line(result.err)
    assert redis.Redis.from_url(redis_url).keys() == [b"tav:marker"]


@pytest.mark.promise("P-MARKER-ON-PURPOSE")
def test_an_import_into_a_wiped_store_is_refused_and_a_restore_marks_it_last(
    cli: Cli, redis_url: str, tmp_path: Path
) -> None:
    assert cli("init").code == 0
    path = write_lines(
        tmp_path / "tokens.jsonl", [{"token": f"tok_{n}", "ip_enabled": True} for n in range(50)]
    )
    assert cli("import", str(path)).code == 0
    exported = tmp_path / "export.jsonl"
    assert cli("export", str(exported)).code == 0
    raw = redis.Redis.from_url(redis_url)
    raw.flushall()
    refused = cli("import", str(exported))
    assert refused.code == 2
    assert "import --restore" in one_error_line(refused.err)
    assert raw.dbsize() == 0
    restored = cli("import", "--restore", str(exported), "--batch-size", "10")
    assert restored.code == 0, restored.err
    assert "restored 50 records" in restored.out
    assert raw.get("tav:marker") is not None
    assert cli("export").out == exported.read_text()


@pytest.mark.promise("P-ADMIN-TRUTH")
def test_import_dry_run_on_an_unmarked_store_warns_that_the_import_would_be_refused(
    cli: Cli, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "tokens.jsonl", [{"token": TOKEN}])
    result = cli("import", "--dry-run", str(path))
    assert result.code == 0
    assert "would be refused" in result.err


# ------------------------------------------------------------------------------ nothing stored


@pytest.mark.promise("P-NOTHING-STORED-CREATES-NOTHING")
@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("ips", "remove", TOKEN, CLIENT_IP), id="ips remove"),
        pytest.param(("domains", "remove", TOKEN, "app.example.com"), id="domains remove"),
        pytest.param(("ips", "clear", TOKEN), id="ips clear"),
        pytest.param(("domains", "set", TOKEN), id="domains set to nothing"),
        pytest.param(("disable", TOKEN, "ip"), id="disable"),
        pytest.param(("mode", TOKEN, "report"), id="mode"),
        pytest.param(("mode", TOKEN, "enforce", "--json"), id="mode --json"),
    ],
)
def test_taking_away_from_a_token_with_nothing_stored_exits_1_and_creates_nothing(
    cli: Cli, redis_url: str, args: tuple[str, ...]
) -> None:
    assert cli("init").code == 0
    result = cli(*args)
    assert result.code == 1
    assert result.out == ""
    assert "nothing is stored" in one_error_line(result.err)
    assert redis.Redis.from_url(redis_url).keys() == [b"tav:marker"]


# ------------------------------------------------------------------------------ eviction


@pytest.fixture(scope="module")
def evicting() -> Iterator[RedisProcess]:
    server = RedisProcess("--maxmemory-policy", "allkeys-lru")
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def managed() -> Iterator[RedisProcess]:
    server = RedisProcess("--rename-command", "CONFIG", '""')
    server.start()
    yield server
    server.cleanup()


@pytest.mark.promise("P-EVICTION-IS-A-WIPE")
@pytest.mark.promise("P-ADMIN-ERRORS")
def test_init_on_a_store_that_may_evict_exits_2_unless_forced(evicting: RedisProcess) -> None:
    redis.Redis.from_url(evicting.url).flushall()
    cli = Cli(evicting.url)
    refused = cli("init")
    assert refused.code == 2
    line = one_error_line(refused.err)
    assert "allkeys-lru" in line
    assert "noeviction" in line
    assert "--force" in line
    forced = cli("init", "--force")
    assert forced.code == 0
    assert "allkeys-lru" in forced.err  # a warning, still


@pytest.mark.promise("P-EVICTION-IS-A-WIPE")
def test_init_where_config_is_refused_warns_and_initialises(managed: RedisProcess) -> None:
    result = Cli(managed.url)("init")
    assert result.code == 0
    assert "initialised" in result.out
    assert "could not check" in result.err


# ------------------------------------------------------------------------------ store URLs


BAD_URLS = [
    pytest.param("redis:/127.0.0.1:6379", "no host", id="one slash"),
    pytest.param("redis://:6379/0", "no host", id="no host"),
    pytest.param("redis://127.0.0.1:6379/abc", "database 'abc' is not a number", id="database abc"),
    pytest.param("redis://127.0.0.1:6379/0/1", "is not a number", id="two databases"),
    pytest.param("redis://127.0.0.1:6379/?db=x", "database 'x' is not a number", id="db option"),
    pytest.param("redis://127.0.0.1:abc/0", "Port", id="port abc"),
    pytest.param("redis://127.0.0.1:99999/0", "Port", id="port out of range"),
    pytest.param("unix://", "no socket path", id="unix without a path"),
]


@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.parametrize(("url", "says"), BAD_URLS)
def test_a_typo_in_the_store_url_is_one_line_and_exit_2(url: str, says: str) -> None:
    result = Cli(url)("show", TOKEN)
    assert result.code == 2
    line = one_error_line(result.err)
    assert "bad store URL" in line
    assert says in line


@pytest.mark.parametrize(("url", "says"), BAD_URLS)
def test_a_validator_refuses_the_same_urls_when_built(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match="bad store URL"):
        Validator.from_url(url, secret=SECRET)


@pytest.mark.promise("P-ADMIN-ERRORS")
def test_a_password_in_a_bad_url_is_not_repeated() -> None:
    result = Cli("redis://user:hunter2@:6379/0")("show", TOKEN)
    assert result.code == 2
    assert "hunter2" not in result.err


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    """A web server: what a store URL with the wrong port often points at."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def garbage_port() -> Iterator[int]:
    """A server that answers anything with bytes that are no Redis reply."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(b"\x00\x17garbage\xff\r\n")
                    conn.recv(4096)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    listener.close()


@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.parametrize("args", [("show", TOKEN), ("domains", "add", TOKEN, "app.example.com"), ("init",)])
@pytest.mark.parametrize("kind", ["http", "garbage", "closed"])
def test_a_store_url_that_is_no_redis_is_one_line_and_exit_3(
    request: pytest.FixtureRequest, kind: str, args: tuple[str, ...]
) -> None:
    port = free_port() if kind == "closed" else request.getfixturevalue(f"{kind}_port")
    result = Cli(f"redis://127.0.0.1:{port}/0")(*args, "--timeout", "2")
    assert result.code == 3
    assert "unavailable" in one_error_line(result.err)


@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.promise("P-NO-UNHANDLED-ERROR")
@pytest.mark.parametrize("kind", ["http", "garbage"])
async def test_a_read_from_a_port_that_is_no_redis_is_a_store_failure_without_a_traceback(
    request: pytest.FixtureRequest, kind: str
) -> None:
    port = request.getfixturevalue(f"{kind}_port")
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    store = Store.from_url(f"redis://127.0.0.1:{port}/0", secret=SECRET, timeout=2, connect_timeout=2)
    try:
        for _ in range(3):
            # The cache-miss read path: a multiplexed connection, parsed by hiredis.
            with pytest.raises(StoreUnavailable, match="not a Redis server"):
                await store.read(store.token_hash(TOKEN))
    finally:
        await store.close()
        loop.set_exception_handler(None)
    assert unhandled == []
