"""The gate behind a real Caddy (`forward_auth`), configured with docs/deploying/Caddyfile.

The same curl cases as behind nginx (tests/e2e/proxies.py, CURL_CASES): a real redis-server,
tokens written with the Admin API, `python -m validator.web.gate --proxy caddy`, Caddy and a small
upstream on free loopback ports, curl from 127.0.0.2 (an address that is no trusted proxy).
Caddy hands the gate's non-2xx answers to the client as they are: status, headers and body.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.chromium import Chromium
from tests.e2e.proxies import (
    BROWSER_CASES,
    CLIENT_IP,
    CURL_CASES,
    PROXY_IP,
    RESTRICTIONS,
    Caddy,
    Gate,
    Upstream,
    curl,
    expect_error_cors,
    expect_reply,
    fetch_in_browser,
    put_token,
    run_case,
)
from tests.redis_servers import RedisProcess, free_port


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    app = Upstream()
    app.start()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def gate(redis_server: RedisProcess) -> Iterator[Gate]:
    # Some token stored first: a store nobody ever wrote to may be taken for a wiped one.
    put_token(redis_server.url, f"tok-first-{uuid.uuid4().hex}", RESTRICTIONS["domain"])
    process = Gate("caddy", redis_server.url)
    process.start()
    yield process
    process.cleanup()


@pytest.fixture(scope="module")
def caddy(gate: Gate, upstream: Upstream) -> Iterator[Caddy]:
    proxy = Caddy(gate.port, upstream.port)
    proxy.start()
    yield proxy
    proxy.cleanup()


@pytest.mark.parametrize(("restriction", "headers", "query", "status"), CURL_CASES)
def test_curl_through_caddy(
    caddy: Caddy,
    redis_server: RedisProcess,
    restriction: str | None,
    headers: tuple[str, ...],
    query: str,
    status: int,
) -> None:
    run_case(caddy.url(), redis_server.url, restriction, headers, query, status)


@pytest.mark.parametrize(("restriction", "page", "api", "status"), BROWSER_CASES)
def test_fetch_from_chromium_through_caddy(
    caddy: Caddy,
    redis_server: RedisProcess,
    browser: Chromium,
    restriction: str,
    page: str,
    api: str,
    status: int,
) -> None:
    fetch_in_browser(browser, caddy, redis_server.url, restriction, page, api, status)


def test_the_app_gets_the_decision_not_the_clients_say(caddy: Caddy, redis_server: RedisProcess) -> None:
    token = f"tok-gate-{uuid.uuid4().hex}"
    put_token(redis_server.url, token, RESTRICTIONS["client-ip"])
    forged = ("X-Token-Access: allowed", "X-Token-Fingerprint: forged")

    reply = curl(caddy.url() + "/v1/hello", f"Authorization: Bearer {token}", *forged, method="POST")
    assert reply.status == 200, reply
    seen = reply.json()
    assert isinstance(seen, dict)
    assert seen["method"] == "POST"
    assert seen["headers"]["x-token-fingerprint"] not in ("forged", token)
    assert seen["headers"]["x-forwarded-for"] == CLIENT_IP
    assert seen["headers"]["authorization"] == f"Bearer {token}"  # the app authenticates with it

    public = curl(caddy.url() + "/status", *forged).json()
    assert isinstance(public, dict)
    assert "x-token-access" not in public["headers"]
    assert "x-token-fingerprint" not in public["headers"]


def test_denial_reference_passes_through(caddy: Caddy, gate: Gate, redis_server: RedisProcess) -> None:
    """Caddy copies the gate's whole 403 to the client (`copy_headers` is for allowed requests
    only): its `Access-Denied-Ref` reaches the client, CORS-readable by a page on another origin."""
    token = f"tok-gate-{uuid.uuid4().hex}"
    put_token(redis_server.url, token, RESTRICTIONS["elsewhere"])
    forward_auth = ("X-Forwarded-Method: GET", "X-Forwarded-Uri: /v1/hello", f"X-Forwarded-For: {CLIENT_IP}")
    direct = curl(gate.url() + "/check", f"X-API-Key: {token}", *forward_auth, source=PROXY_IP)
    assert direct.status == 403
    through = curl(caddy.url() + "/v1/hello", f"X-API-Key: {token}")
    assert through.status == 403
    expect_reply(through)
    assert "access-control-allow-origin" not in through.headers
    from_page = curl(caddy.url() + "/v1/hello", f"X-API-Key: {token}", "Origin: http://evil.test")
    expect_error_cors(from_page, "http://evil.test")
    sent, seen = direct.header("access-denied-ref"), through.header("access-denied-ref")
    assert sent and seen and len(seen) == len(sent)


@pytest.mark.parametrize("broken", ["store down", "gate down"])
def test_unavailable_is_503(upstream: Upstream, broken: str) -> None:
    """A store that does not answer with nothing cached (the gate's 503, passed through), and a
    gate that does not answer (Caddy's 502, which the snippet's `handle_errors` answers with the
    gate's 503 JSON): never the app."""
    dead = free_port()
    gate = None
    if broken == "store down":
        gate = Gate("caddy", f"redis://127.0.0.1:{dead}/0")
        gate.start()
    proxy = Caddy(gate.port if gate is not None else dead, upstream.port)
    proxy.start()
    try:
        reply = curl(proxy.url() + "/v1/hello", "X-API-Key: any-token")
        assert reply.status == 503, reply
        expect_reply(reply)
    finally:
        proxy.cleanup()
        if gate is not None:
            gate.cleanup()


def test_app_down_stays_a_502(gate: Gate) -> None:
    """The snippet's error handler names the gate alone: an app that does not answer is Caddy's
    plain 502, not a token problem."""
    proxy = Caddy(gate.port, free_port())
    proxy.start()
    try:
        reply = curl(proxy.url() + "/v1/hello", f"X-API-Key: unknown-{uuid.uuid4().hex}")
        assert (reply.status, reply.body) == (502, "")
    finally:
        proxy.cleanup()
