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
from tests.e2e.differential import check_every_spelling_is_checked
from tests.e2e.proxies import (
    BROWSER_CASES,
    CLIENT_IP,
    CURL_CASES,
    RESTRICTIONS,
    Caddy,
    Gate,
    Upstream,
    check_allowed_reply_keeps_the_apps_cors,
    check_decision_reaches_the_app,
    check_denial_ref_passes_through,
    check_unavailable_is_503,
    curl,
    fetch_in_browser,
    gate_on,
    put_token,
    run_case,
)
from tests.redis_servers import RedisProcess, free_port

pytestmark = [pytest.mark.promise("P-GATE-SAME-ANSWERS")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as app:
        yield app


@pytest.fixture(scope="module")
def gate(redis_server: RedisProcess) -> Iterator[Gate]:
    with gate_on("caddy", redis_server.url) as process:
        yield process


@pytest.fixture(scope="module")
def caddy(gate: Gate, upstream: Upstream) -> Iterator[Caddy]:
    with Caddy(gate.port, upstream.port) as proxy:
        yield proxy


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


def test_every_spelling_of_a_path_is_checked(caddy: Caddy, redis_server: RedisProcess) -> None:
    """`/V1/hello`, `/v1;x/hello` and other spellings an app's router may take for `/v1/hello` go
    through the gate; a public path, however spelled, reaches the app as listed (issue 23, hole 2)."""
    token = f"tok-gate-{uuid.uuid4().hex}"
    put_token(redis_server.url, token, RESTRICTIONS["elsewhere"])
    check_every_spelling_is_checked(caddy.port, token)


def test_the_app_gets_the_decision_not_the_clients_say(caddy: Caddy, redis_server: RedisProcess) -> None:
    check_decision_reaches_the_app(caddy, redis_server.url, "x-forwarded-for")


def test_denial_reference_passes_through(caddy: Caddy, gate: Gate, redis_server: RedisProcess) -> None:
    """Caddy copies the gate's whole 403 to the client (`copy_headers` is for allowed requests
    only): its `Access-Denied-Ref` reaches the client, CORS-readable by a page on another origin."""
    forward_auth = ("X-Forwarded-Method: GET", "X-Forwarded-Uri: /v1/hello", f"X-Forwarded-For: {CLIENT_IP}")
    check_denial_ref_passes_through(caddy, gate, redis_server.url, forward_auth)


@pytest.mark.parametrize("broken", ["store down", "gate down"])
def test_unavailable_is_503(upstream: Upstream, broken: str) -> None:
    """A store that does not answer with nothing cached (the gate's 503, passed through), and a
    gate that does not answer (Caddy's 502, which the snippet's `handle_errors` answers with the
    gate's 503 JSON): never the app."""
    check_unavailable_is_503(Caddy, upstream, broken)


def test_app_down_stays_a_502(gate: Gate) -> None:
    """The snippet's error handler names the gate alone: an app that does not answer is Caddy's
    plain 502, not a token problem."""
    with Caddy(gate.port, free_port()) as proxy:
        reply = curl(proxy.url() + "/v1/hello", f"X-API-Key: unknown-{uuid.uuid4().hex}")
        assert (reply.status, reply.body) == (502, "")


@pytest.mark.promise("P-CORS-NEVER-WIDENS")
def test_an_allowed_reply_keeps_the_apps_cors_policy(caddy: Caddy, redis_server: RedisProcess) -> None:
    check_allowed_reply_keeps_the_apps_cors(caddy, redis_server.url)
