"""`rediss://` against real TLS redis-servers: the multiplexed read connection takes the same
TLS options as redis-py's client (`ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile`/`ssl_keyfile`,
`ssl_check_hostname`), with the same defaults. Certificates are made by the `openssl` CLI."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from redis.asyncio.connection import SSLConnection, parse_url

from tests.redis_servers import RedisProcess, free_port
from validator import Admin, ConfigurationError, Reason, Store, StoreUnavailable, Validator
from validator.store.wire import Multiplexer, SingleWire, _Protocol, tls_context

TOKEN = "tok_tls"
SECRET = "tls-secret"
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]


def _openssl(pki: Path, *args: str) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", *EC_KEY, *args], cwd=pki, check=True, capture_output=True, timeout=30
    )


def _authority(pki: Path, name: str) -> None:
    _openssl(pki, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN=tav {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip


def _leaf(pki: Path, name: str, alt_names: str, authority: str = "ca") -> None:
    _openssl(pki, "-CA", f"{authority}.crt", "-CAkey", f"{authority}.key",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:FALSE",
             "-addext", f"subjectAltName={alt_names}")  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca (signs the rest), other-ca (signs stranger only), server (127.0.0.1 and localhost),
    misnamed (a server certificate for other.example only), client, stranger (a client)."""
    pki = tmp_path_factory.mktemp("pki")
    _authority(pki, "ca")
    _authority(pki, "other-ca")
    _leaf(pki, "server", "IP:127.0.0.1,DNS:localhost")
    _leaf(pki, "misnamed", "DNS:other.example")
    _leaf(pki, "client", "DNS:client.example")
    _leaf(pki, "stranger", "DNS:stranger.example", authority="other-ca")
    return pki


class TLSRedisProcess(RedisProcess):
    """A redis-server that speaks TLS only (`--port 0`), with the certificate `certificate`."""

    def __init__(self, pki: Path, certificate: str, *, auth_clients: bool) -> None:
        port = free_port()
        super().__init__(
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(pki / f"{certificate}.crt"),
            "--tls-key-file", str(pki / f"{certificate}.key"),
            "--tls-ca-cert-file", str(pki / "ca.crt"),
            "--tls-auth-clients", "yes" if auth_clients else "no",
            port=port,
        )  # fmt: skip
        self.pki = pki

    def answers(self) -> bool:
        context = ssl.create_default_context(cafile=self.pki / "ca.crt")
        context.check_hostname = False
        context.load_cert_chain(self.pki / "client.crt", self.pki / "client.key")
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
                context.wrap_socket(raw) as tls,
            ):
                tls.sendall(b"PING\r\n")
                return tls.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def tls_url(self, **options: str) -> str:
        """This server's rediss:// URL; an option value naming a .crt or .key file is taken
        from the test's certificates."""
        resolved = {
            name: str(self.pki / value) if value.endswith((".crt", ".key")) else value
            for name, value in options.items()
        }
        query = urlencode(resolved, safe="/")
        return f"rediss://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")


def _server(pki: Path, certificate: str, *, auth_clients: bool) -> Iterator[TLSRedisProcess]:
    server = TLSRedisProcess(pki, certificate, auth_clients=auth_clients)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def server(pki: Path) -> Iterator[TLSRedisProcess]:
    yield from _server(pki, "server", auth_clients=False)


@pytest.fixture(scope="module")
def mtls_server(pki: Path) -> Iterator[TLSRedisProcess]:
    """Refuses a client without a certificate signed by the CA."""
    yield from _server(pki, "server", auth_clients=True)


@pytest.fixture(scope="module")
def misnamed_server(pki: Path) -> Iterator[TLSRedisProcess]:
    """Its certificate, signed by the CA, names other.example only."""
    yield from _server(pki, "misnamed", auth_clients=False)


async def _outcome(read: Callable[[], Any]) -> BaseException | None:
    try:
        async with asyncio.timeout(10):
            await read()
    except Exception as error:
        return error
    return None


CA = {"ssl_ca_certs": "ca.crt"}
OTHER_CA = {"ssl_ca_certs": "other-ca.crt"}
CLIENT = {"ssl_certfile": "client.crt", "ssl_keyfile": "client.key"}
STRANGER = {"ssl_certfile": "stranger.crt", "ssl_keyfile": "stranger.key"}
NOT_TRUSTED = "certificate is refused"
MISNAMED = "mismatch, certificate is not valid for '127.0.0.1'"


@pytest.mark.parametrize(
    ("which", "options", "refusal"),
    [
        pytest.param("server", CA, None, id="verified by its CA, host name checked"),
        pytest.param("server", {**CA, "ssl_cert_reqs": "required", "ssl_check_hostname": "true"}, None,
                     id="verified, said explicitly"),
        pytest.param("server", OTHER_CA, NOT_TRUSTED, id="another CA"),
        pytest.param("server", {}, NOT_TRUSTED, id="no CA given: the system's do not know it"),
        pytest.param("server", {"ssl_ca_certs": "missing.crt"}, "cannot load ssl_ca_certs",
                     id="CA file missing"),
        pytest.param("server", {"ssl_cert_reqs": "none"}, None, id="cert_reqs none"),
        pytest.param("server", {"ssl_cert_reqs": "none", **OTHER_CA}, None, id="cert_reqs none, another CA"),
        pytest.param("mtls_server", {**CA, **CLIENT}, None, id="client certificate presented"),
        pytest.param("mtls_server", CA, "requires a client certificate: set ssl_certfile",
                     id="client certificate required, none given"),
        pytest.param("mtls_server", {**CA, **STRANGER}, "does not trust the client certificate",
                     id="client certificate of another CA"),
        pytest.param("server", {**CA, "ssl_certfile": "missing.crt"}, "cannot load ssl_certfile",
                     id="client certificate file missing"),
        pytest.param("misnamed_server", {**CA, "ssl_check_hostname": "true"}, MISNAMED,
                     id="certificate for another name"),
        pytest.param("misnamed_server", CA, MISNAMED, id="another name, host name checked by default"),
        pytest.param("misnamed_server", {**CA, "ssl_check_hostname": "false"}, None,
                     id="host name check off"),
    ],
)  # fmt: skip
async def test_both_connections_honour_the_same_options(
    request: pytest.FixtureRequest, which: str, options: dict[str, str], refusal: str | None
) -> None:
    server: TLSRedisProcess = request.getfixturevalue(which)
    store = Store.from_url(server.tls_url(**options), secret=SECRET, timeout=2, connect_timeout=2)
    try:
        assert isinstance(store._wires, SingleWire)
        multiplexed = await _outcome(lambda: store.read(store.token_hash(TOKEN)))
        redis_py = await _outcome(store.client.ping)
    finally:
        await store.close()
    assert (multiplexed is None, redis_py is None) == (refusal is None, refusal is None), (
        multiplexed,
        redis_py,
    )
    if refusal is not None:
        # Fail closed with one clear line, not a hang (bounded above) nor a traceback.
        assert isinstance(multiplexed, StoreUnavailable)
        assert refusal in str(multiplexed)
        assert "\n" not in str(multiplexed)


async def test_a_miss_reads_through_the_verified_multiplexer(
    server: TLSRedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.tls_url(**CA)
    admin = Admin.from_url(url, secret=SECRET)
    try:
        await admin.init()
        await admin.set_domains(TOKEN, ["app.example.com"])
        await admin.enable(TOKEN, "domain")
    finally:
        await admin.close()
    validator = Validator.from_url(url, secret=SECRET, timeout=2, connect_timeout=2)
    wires = validator.store._wires
    assert isinstance(wires, SingleWire)
    wire = wires.multiplexer
    sent: list[object] = []

    def spy(method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            sent.append(args[0])
            return method(*args)

        return counted

    monkeypatch.setattr(wire, "execute", spy(wire.execute))
    monkeypatch.setattr(wire, "send_now", spy(wire.send_now))
    monkeypatch.setattr(wire, "transaction", spy(wire.transaction))
    monkeypatch.setattr(wire, "transaction_now", spy(wire.transaction_now))
    try:
        async with asyncio.timeout(10):
            listed = await validator.check(TOKEN, origin="https://app.example.com")
            unlisted = await validator.check(TOKEN, origin="https://evil.test")
        assert (listed.reason, unlisted.reason) == (Reason.DOMAIN_LISTED, Reason.DOMAIN_NOT_LISTED)
        assert any(isinstance(packed, bytes) and packed.startswith(b"*1\r\n$5\r\nMULTI") for packed in sent)
        assert wire._protocol is not None and wire._protocol.transport is not None
        assert wire._protocol.transport.get_extra_info("ssl_object") is not None
    finally:
        await validator.close()


async def test_a_refused_certificate_fails_the_check_closed(server: TLSRedisProcess) -> None:
    validator = Validator.from_url(
        server.tls_url(ssl_ca_certs="other-ca.crt"), secret=SECRET, timeout=1, connect_timeout=1
    )
    try:
        async with asyncio.timeout(10):
            with pytest.raises(StoreUnavailable) as failure:
                await validator.check(TOKEN, origin="https://app.example.com")
    finally:
        await validator.close()
    assert "\n" not in str(failure.value)
    assert "certificate" in str(failure.value)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        pytest.param("ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe' is not one of", id="unknown cert_reqs"),
        pytest.param(
            "ssl_keyfile=/client.key", "ssl_keyfile needs ssl_certfile", id="key without certificate"
        ),
    ],
)
def test_meaningless_tls_options_are_refused_at_construction(query: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        Store.from_url(f"rediss://127.0.0.1:1/0?{query}", secret=SECRET)


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="defaults: required, host name checked"),
        pytest.param("ssl_cert_reqs=none", id="none"),
        pytest.param("ssl_cert_reqs=none&ssl_check_hostname=true", id="none wins over the host name check"),
        pytest.param("ssl_cert_reqs=optional&ssl_check_hostname=false", id="optional"),
        pytest.param("ssl_check_hostname=", id="empty host name check"),
        pytest.param("ssl_ca_certs=CA", id="a CA file"),
        pytest.param("ssl_certfile=CLIENT.crt&ssl_keyfile=CLIENT.key", id="a client certificate"),
        pytest.param("ssl_include_verify_flags=VERIFY_X509_STRICT&ssl_exclude_verify_flags=VERIFY_X509_TRUSTED_FIRST",
                     id="verify flags"),
        pytest.param("ssl_min_version=772&ssl_ciphers=ECDHE%2BAESGCM", id="minimum version, ciphers"),
    ],
)  # fmt: skip
def test_the_multiplexer_context_is_redis_pys(pki: Path, query: str) -> None:
    query = query.replace("CLIENT", str(pki / "client")).replace("CA", str(pki / "ca.crt"))
    url = f"rediss://127.0.0.1:1/0?{query}"
    kwargs: dict[str, Any] = dict(parse_url(url))
    kwargs.pop("connection_class")
    # A context of its own: redis-py 8 shares one context per set of options across connections,
    # and a shared one that already verified a server has lazily loaded more CAs from the system's
    # certificate directory (SSL_CERT_DIR), so its `get_ca_certs()` depends on earlier tests.
    their_options = SSLConnection(**kwargs).ssl_context
    build = getattr(their_options, "_build", None)
    theirs = build() if build is not None else their_options.get()
    ours = tls_context(Multiplexer(url, timeout=1, connect_timeout=1)._tls or {})

    def seen(context: ssl.SSLContext) -> tuple[Any, ...]:
        return (
            context.verify_mode,
            context.check_hostname,
            context.verify_flags,
            context.minimum_version,
            context.get_ca_certs(),
            [cipher["name"] for cipher in context.get_ciphers()],
        )

    assert seen(ours) == seen(theirs)


@pytest.mark.parametrize(
    ("query", "answered", "hinted"),
    [
        pytest.param("ssl_ca_certs=ca.crt", False, True, id="reset before any reply, no certificate"),
        pytest.param("ssl_ca_certs=ca.crt", True, False, id="reset after replies"),
        pytest.param("ssl_ca_certs=ca.crt&ssl_certfile=c.crt&ssl_keyfile=c.key", False, False,
                     id="a certificate was given"),
    ],
)  # fmt: skip
async def test_a_reset_before_any_reply_suggests_the_client_certificate(
    query: str, answered: bool, hinted: bool
) -> None:
    """A TLS 1.3 server refuses a missing client certificate after the handshake; its alert races
    the first request and may be lost to a connection reset (seen once in a CI run): the error
    still says what to set, where that is the likely cause."""
    wire = Multiplexer(f"rediss://127.0.0.1:1/?{query}", timeout=1, connect_timeout=1)
    failures: list[str] = []
    wire._fail = lambda error, protocol=None: failures.append(str(error))  # type: ignore[method-assign]
    protocol = _Protocol(wire)
    protocol.answered = answered
    protocol.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    assert len(failures) == 1
    assert ("requires a client certificate: set ssl_certfile" in failures[0]) is hinted
    assert "Connection reset by peer" in failures[0]
