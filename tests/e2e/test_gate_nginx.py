"""The gate behind a real nginx (`auth_request`), configured with docs/deploying/nginx.conf.

A real redis-server, tokens written with the Admin API, `python -m validator.web.gate --proxy
nginx`, nginx and a small upstream on free loopback ports; requests from curl (from 127.0.0.2,
an address that is no trusted proxy) and from headless Chromium, as clients would send them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.chromium import Chromium
from tests.e2e.conftest import SECRET
from tests.e2e.differential import check_every_spelling_is_checked
from tests.e2e.proxies import (
    BROWSER_CASES,
    CLIENT_IP,
    CURL_CASES,
    FORBIDDEN,
    RESTRICTIONS,
    Gate,
    Nginx,
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
from tests.redis_servers import RedisProcess

pytestmark = [pytest.mark.promise("P-GATE-SAME-ANSWERS")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as app:
        yield app


@pytest.fixture(scope="module")
def gate(redis_server: RedisProcess) -> Iterator[Gate]:
    with gate_on("nginx", redis_server.url) as process:
        yield process


@pytest.fixture(scope="module")
def nginx(gate: Gate, upstream: Upstream) -> Iterator[Nginx]:
    with Nginx(gate.port, upstream.port) as proxy:
        yield proxy


# --------------------------------------------------------------------------- curl


@pytest.mark.parametrize(("restriction", "headers", "query", "status"), CURL_CASES)
def test_curl_through_nginx(
    nginx: Nginx,
    redis_server: RedisProcess,
    restriction: str | None,
    headers: tuple[str, ...],
    query: str,
    status: int,
) -> None:
    run_case(nginx.url(), redis_server.url, restriction, headers, query, status)


def test_every_spelling_of_a_path_is_checked(nginx: Nginx, redis_server: RedisProcess) -> None:
    """`/V1/hello`, `/v1;x/hello` and other spellings an app's router may take for `/v1/hello` go
    through the gate; a public path, however spelled, reaches the app as listed (issue 23, hole 2)."""
    token = f"tok-gate-{uuid.uuid4().hex}"
    put_token(redis_server.url, token, RESTRICTIONS["elsewhere"])
    check_every_spelling_is_checked(nginx.port, token)


def test_the_app_gets_the_decision_not_the_clients_say(nginx: Nginx, redis_server: RedisProcess) -> None:
    check_decision_reaches_the_app(nginx, redis_server.url, "x-real-ip", "X-Real-IP: 203.0.113.7")


def test_the_gate_refuses_a_client_that_goes_around_nginx(gate: Gate, redis_server: RedisProcess) -> None:
    token = f"tok-gate-{uuid.uuid4().hex}"
    put_token(redis_server.url, token, RESTRICTIONS["elsewhere"])
    reply = curl(
        gate.url() + "/check",
        f"X-API-Key: {token}",
        "X-Original-Method: GET",
        "X-Original-URI: /v1/hello",
        "X-Real-IP: 203.0.113.7",
    )
    assert reply.status == 403
    assert reply.json() == FORBIDDEN


def test_denial_reference_passes_through(nginx: Nginx, gate: Gate, redis_server: RedisProcess) -> None:
    """The gate's `Access-Denied-Ref` on a 403 reaches the client through nginx
    (`auth_request_set` + `add_header ... always`), CORS-readable by a page on another origin."""
    forward_auth = ("X-Original-Method: GET", "X-Original-URI: /v1/hello", f"X-Real-IP: {CLIENT_IP}")
    check_denial_ref_passes_through(nginx, gate, redis_server.url, forward_auth)


def test_the_reference_a_client_sees_names_the_denial(nginx: Nginx, redis_server: RedisProcess) -> None:
    """What a support desk does with the `Access-Denied-Ref` a client reports through nginx:
    `validator-admin denials --ref` finds the denial the gate logged, with what the gate saw."""
    token = f"tok-gate-{uuid.uuid4().hex}"
    put_token(redis_server.url, token, RESTRICTIONS["domain"])
    reply = curl(nginx.url() + "/v1/hello", f"X-API-Key: {token}", "Origin: https://evil.test")
    assert reply.status == 403
    ref = reply.header("access-denied-ref")
    assert ref

    env = {**os.environ, "VALIDATOR_STORE_URL": redis_server.url, "VALIDATOR_SECRET": SECRET}
    deadline = time.monotonic() + 10  # the gate's denial writer flushes in the background
    while True:
        found = subprocess.run(
            [sys.executable, "-m", "validator", "denials", "--ref", ref, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=True,
        )
        answer = json.loads(found.stdout)
        if answer["found"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer["found"], answer
    (denial,) = answer["denials"]
    assert (denial["seen"], denial["source"]) == ("evil.test", "front_end")
    assert token not in found.stdout


# --------------------------------------------------------------------------- fail closed


@pytest.mark.parametrize("broken", ["store down", "gate down"])
def test_unavailable_is_503(upstream: Upstream, broken: str) -> None:
    """A store that does not answer with nothing cached (the gate answers 503, which nginx's
    auth_request turns into a 500), and a gate that does not answer (a 502 there): the client
    gets the gate's 503 JSON, never the app."""
    check_unavailable_is_503(Nginx, upstream, broken)


# --------------------------------------------------------------------------- Chromium


@pytest.mark.parametrize(("restriction", "page", "api", "status"), BROWSER_CASES)
def test_fetch_from_chromium_through_nginx(
    nginx: Nginx,
    redis_server: RedisProcess,
    browser: Chromium,
    restriction: str,
    page: str,
    api: str,
    status: int,
) -> None:
    fetch_in_browser(browser, nginx, redis_server.url, restriction, page, api, status)


@pytest.mark.promise("P-CORS-NEVER-WIDENS")
def test_an_allowed_reply_keeps_the_apps_cors_policy(nginx: Nginx, redis_server: RedisProcess) -> None:
    check_allowed_reply_keeps_the_apps_cors(nginx, redis_server.url)
