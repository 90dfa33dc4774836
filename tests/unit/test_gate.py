"""The forward-auth gate in process (httpx's ASGI transport): each proxy's header set as it
really sends it, the decision table through each, spoofing and malformed forward-auth requests,
the exact bodies, report-only, the gate's own endpoints and its settings.

Traefik and Envoy have no Debian package here: these header sets are their only tests. nginx
and Caddy also run for real in tests/e2e.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple

import httpx
import pytest

from validator import Admin, ConfigurationError, Restrictions, Validator
from validator.store import fingerprint
from validator.web.gate import Gate, build_gate
from validator.web.types import Message

pytestmark = [pytest.mark.promise("P-GATE-SAME-ANSWERS")]

FORBIDDEN_BODY = b'{"error": "Access denied. You don\'t have permission to access this."}'
UNAUTHORIZED_BODY = b'{"error": "API token required."}'
UNAVAILABLE_BODY = b'{"error": "Access check unavailable. Try again later."}'
LISTED_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.test"
LISTED_IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"
PROXY = "10.0.0.2"  # the proxy's address, as the gate sees its connection
TRUSTED = "10.0.0.0/24"
STRANGER = "10.0.1.5"  # a peer outside TRUSTED (another pod, a scanner)

TOKENS = {
    "open": Restrictions(),
    "d": Restrictions(domain_enabled=True, domains=["app.example.com"]),
    "i": Restrictions(ip_enabled=True, ips=[LISTED_IP]),
}

Headers = list[tuple[str, str]]


class Forward(NamedTuple):
    """The request a proxy sends the gate for one original request."""

    method: str
    path: str
    headers: Headers


# --------------------------------------------------------------------------- what each proxy sends
# Each function: the original request (method, path?query, the client's address, the client's
# headers) -> the forward-auth request that proxy makes of the gate.


def nginx(method: str, uri: str, client: str, headers: Headers) -> Forward:
    """`auth_request /check;` with `proxy_pass http://gate/check;`, `proxy_pass_request_body
    off;`, `proxy_set_header Content-Length "";` and X-Original-URI $request_uri,
    X-Original-Method $request_method, X-Real-IP $remote_addr (docs/deploying.md). nginx puts the
    set headers first, then every header of the client's (a client's copy of a set one dropped)."""
    own = [
        ("Host", "gate"),
        ("X-Original-URI", uri),
        ("X-Original-Method", method),
        ("X-Real-IP", client),
        ("Connection", "close"),
    ]
    names = {name.lower() for name, _ in own}
    return Forward("GET", "/check", own + [(n, v) for n, v in headers if n.lower() not in names])


def traefik(method: str, uri: str, client: str, headers: Headers) -> Forward:
    """ForwardAuth (`address: http://gate:9000/check`, trustForwardHeader false): the client's
    headers, then X-Forwarded-For set to the client's address and X-Forwarded-Method, -Proto,
    -Host, -Uri set (replacing a client's copy); Go's client adds Accept-Encoding."""
    forwarded = {
        "x-forwarded-for",
        "x-forwarded-method",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-uri",
    }
    kept = [(n, v) for n, v in headers if n.lower() not in forwarded]
    return Forward(
        "GET",
        "/check",
        [
            ("Host", "gate:9000"),
            *kept,
            ("X-Forwarded-For", client),
            ("X-Forwarded-Host", "api.example.com"),
            ("X-Forwarded-Method", method),
            ("X-Forwarded-Port", "443"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Server", "traefik-7d9f"),
            ("X-Forwarded-Uri", uri),
            ("Accept-Encoding", "gzip"),
        ],
    )


def caddy(method: str, uri: str, client: str, headers: Headers) -> Forward:
    """`forward_auth gate:9000 { uri /check }`: a GET with the client's headers, X-Forwarded-
    Method and -Uri set, and reverse_proxy's X-Forwarded-For (the client: not a trusted proxy of
    Caddy's), -Proto and -Host, and Via."""
    forwarded = {
        "x-forwarded-for",
        "x-forwarded-method",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-uri",
    }
    kept = [(n, v) for n, v in headers if n.lower() not in forwarded]
    return Forward(
        "GET",
        "/check",
        [
            ("Host", "api.example.com"),
            *kept,
            ("X-Forwarded-For", client),
            ("X-Forwarded-Host", "api.example.com"),
            ("X-Forwarded-Method", method),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Uri", uri),
            ("Via", "1.1 Caddy"),
        ],
    )


def envoy(method: str, uri: str, client: str, headers: Headers) -> Forward:
    """ext_authz `http_service` with `path_prefix: /authz` and allowed_headers (origin, referer,
    sec-fetch-*, x-api-key, x-forwarded-for, access-control-request-method; authorization, host,
    method, path come anyway): the
    original method, the prefix + the original path and query, the allowed headers, and
    X-Forwarded-For as the connection manager made it (use_remote_address: the client appended,
    a client's own entries left of it) plus Envoy's own address appended by the ext_authz client
    (envoyproxy/envoy#21519)."""
    allowed = ("origin", "referer", "x-api-key", "authorization", "access-control-request-method")
    kept = [(n, v) for n, v in headers if n.lower() in allowed or n.lower().startswith("sec-fetch-")]
    prior = [v for n, v in headers if n.lower() == "x-forwarded-for"]
    chain = ",".join([*prior, client, PROXY])
    return Forward(
        method,
        "/authz" + uri,
        [
            ("Host", "api.example.com"),
            *kept,
            ("X-Forwarded-For", chain),
            ("X-Envoy-Expected-Rq-Timeout-Ms", "200"),
            ("Content-Length", "0"),
        ],
    )


PROXIES: dict[str, Callable[[str, str, str, Headers], Forward]] = {
    "nginx": nginx,
    "traefik": traefik,
    "caddy": caddy,
    "envoy": envoy,
}


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    async with Validator.from_url(f"memory://gate-{uuid.uuid4()}") as validator:
        admin = Admin(validator.store)
        for token, restrictions in TOKENS.items():
            await admin.put(token, restrictions)
        yield validator


async def ask(gate: Any, forward: Forward, peer: str = PROXY) -> httpx.Response:
    transport = httpx.ASGITransport(app=gate, client=(peer, 41000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
        return await client.request(forward.method, forward.path, headers=forward.headers)


def gate_for(validator: Validator, proxy: str, **settings: Any) -> Any:
    return build_gate(validator, proxy=proxy, trusted_proxies=[TRUSTED], **settings)


def assert_forbidden(reply: httpx.Response) -> None:
    assert (reply.status_code, reply.content) == (403, FORBIDDEN_BODY)
    assert reply.headers["content-type"] == "application/json"
    assert "x-token-access" not in reply.headers


# --------------------------------------------------------------------------- the decision, per proxy

DENIED = (403, None, None)
KEY_I = ("X-API-Key", "i")
KEY_D = ("X-API-Key", "d")


def case(name: str, uri: str, client: str, headers: Headers, expect: tuple[int, str | None, str | None],
         method: str = "GET") -> Any:  # fmt: skip
    """An original request and what the proxy hears: (status, X-Token-Access, token checked)."""
    return pytest.param(method, uri, client, headers, *expect, id=name)


DECISIONS = [
    case("IP listed", "/v1/hello", LISTED_IP, [("X-API-Key", "i")], (200, "allowed", "i")),
    case("IP not listed", "/v1/hello", OTHER_IP, [("X-API-Key", "i")], DENIED),
    case("bearer, POST", "/v1/a", LISTED_IP, [("Authorization", "Bearer i")], (200, "allowed", "i"), "POST"),
    case("token in the original query", "/v1/hello?api_key=i&x=1", LISTED_IP, [], (200, "allowed", "i")),
    case("domain listed", "/v1", OTHER_IP, [KEY_D, ("Origin", LISTED_ORIGIN)], (200, "allowed", "d")),
    case("domain not listed", "/v1", LISTED_IP, [KEY_D, ("Origin", OTHER_ORIGIN)], DENIED),
    case("referer not listed", "/v1", LISTED_IP, [KEY_D, ("Referer", OTHER_ORIGIN + "/")], DENIED),
    case("Sec-Fetch-* only: front end", "/v1", LISTED_IP, [KEY_I, ("Sec-Fetch-Mode", "cors")], DENIED),
    case("unrestricted", "/v1/x", OTHER_IP, [("X-API-Key", "open")], (200, "allowed", "open"), "DELETE"),
    case("decoy: query and header differ", "/v1?api_key=open", OTHER_IP, [("X-API-Key", "i")], DENIED),
    case("decoy: two query values", "/v1?api_key=i&api_key=open", LISTED_IP, [], DENIED),
    case(
        "CORS preflight needs no token", "/v1/hello", OTHER_IP,
        [("Origin", OTHER_ORIGIN), ("Access-Control-Request-Method", "GET")],
        (200, "preflight", None), "OPTIONS",
    ),
]  # fmt: skip


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize(("method", "uri", "client", "headers", "status", "access", "token"), DECISIONS)
async def test_decision_through_each_proxy(
    validator: Validator,
    proxy: str,
    method: str,
    uri: str,
    client: str,
    headers: Headers,
    status: int,
    access: str | None,
    token: str | None,
) -> None:
    reply = await ask(gate_for(validator, proxy), PROXIES[proxy](method, uri, client, headers))
    if status == 403:
        assert_forbidden(reply)
        return
    assert (reply.status_code, reply.content) == (200, b"")
    assert reply.headers["x-token-access"] == access
    if token is None:
        assert "x-token-fingerprint" not in reply.headers
    else:
        assert reply.headers["x-token-fingerprint"] == fingerprint(validator.store.token_hash(token))
        assert token not in reply.headers.values()


@pytest.mark.parametrize("proxy", PROXIES)
async def test_no_token_is_401(validator: Validator, proxy: str) -> None:
    reply = await ask(gate_for(validator, proxy), PROXIES[proxy]("GET", "/v1/hello", LISTED_IP, []))
    assert (reply.status_code, reply.content) == (401, UNAUTHORIZED_BODY)
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.headers["content-type"] == "application/json"


@pytest.mark.parametrize("proxy", PROXIES)
async def test_store_down_nothing_cached_is_503(proxy: str) -> None:
    url = "redis://127.0.0.1:1/0"
    async with Validator.from_url(url, secret="s", timeout=0.2, connect_timeout=0.2) as validator:
        forward = PROXIES[proxy]("GET", "/v1/hello", LISTED_IP, [("X-API-Key", "i")])
        reply = await ask(gate_for(validator, proxy), forward)
    assert (reply.status_code, reply.content) == (503, UNAVAILABLE_BODY)
    assert reply.headers["content-type"] == "application/json"


@pytest.mark.parametrize("proxy", PROXIES)
async def test_report_only_lets_a_denial_through_marked(validator: Validator, proxy: str) -> None:
    gate = gate_for(validator, proxy, report_only=True)
    reply = await ask(gate, PROXIES[proxy]("GET", "/v1/hello", OTHER_IP, [("X-API-Key", "i")]))
    assert (reply.status_code, reply.headers["x-token-access"]) == (200, "reported")
    allowed = await ask(gate, PROXIES[proxy]("GET", "/v1/hello", LISTED_IP, [("X-API-Key", "i")]))
    assert allowed.headers["x-token-access"] == "allowed"


@pytest.mark.promise("P-CORS-EXPOSES-REF")
@pytest.mark.parametrize("proxy", PROXIES)
async def test_cors_makes_a_refusal_readable_by_a_page_on_another_origin(
    validator: Validator, proxy: str
) -> None:
    # Traefik, Envoy and Caddy pass the gate's refusal to the browser as it is: with --cors it
    # carries the Origin back, so page script reads the 403 (and its reference) instead of a
    # CORS failure. Without it, nothing is echoed.
    denied = PROXIES[proxy]("GET", "/v1/hello", OTHER_IP, [KEY_D, ("Origin", OTHER_ORIGIN)])
    reply = await ask(gate_for(validator, proxy, cors=True), denied)
    assert_forbidden(reply)
    assert reply.headers["access-control-allow-origin"] == OTHER_ORIGIN
    assert reply.headers["access-control-expose-headers"] == "Access-Denied-Ref"
    assert "origin" in reply.headers["vary"].lower()
    plain = await ask(gate_for(validator, proxy), denied)
    assert_forbidden(plain)
    assert "access-control-allow-origin" not in plain.headers


async def test_token_settings_reach_the_check(validator: Validator) -> None:
    gate = gate_for(
        validator, "nginx", token_header="X-Key", token_query="key", token_sources=("header", "query")
    )
    for headers, uri, status in [
        ([("X-Key", "i")], "/v1", 200),
        ([], "/v1?key=i", 200),
        ([("X-API-Key", "i")], "/v1?api_key=i", 401),
        ([("Authorization", "Bearer i")], "/v1", 401),
    ]:
        reply = await ask(gate, nginx("GET", uri, LISTED_IP, headers))
        assert reply.status_code == status, (headers, uri)


# --------------------------------------------------------------------------- spoofing and malformed


def _without(forward: Forward, name: str) -> Forward:
    return forward._replace(headers=[(n, v) for n, v in forward.headers if n.lower() != name])


def _plus(forward: Forward, *headers: tuple[str, str]) -> Forward:
    return forward._replace(headers=[*forward.headers, *headers])


def _replacing(forward: Forward, name: str, value: str) -> Forward:
    return forward._replace(headers=[(n, value if n.lower() == name else v) for n, v in forward.headers])


# Token "i" is listed for LISTED_IP only; every case must not be allowed: (proxy, forward-auth
# request, status).
DENIED_IP_TOKEN = nginx("GET", "/v1/hello", OTHER_IP, [("X-API-Key", "i")])
SPOOFING = [
    pytest.param(
        "nginx",
        nginx("GET", "/v1/hello", OTHER_IP, [("X-API-Key", "i"), ("X-Forwarded-For", LISTED_IP)]),
        403,
        id="nginx: client's X-Forwarded-For is not read (X-Real-IP is)",
    ),
    pytest.param(
        "nginx",
        _plus(DENIED_IP_TOKEN, ("X-Real-IP", LISTED_IP)),
        403,
        id="nginx: a second X-Real-IP means no client",
    ),
    pytest.param(
        "nginx",
        _replacing(DENIED_IP_TOKEN, "x-real-ip", f"{LISTED_IP}, {OTHER_IP}"),
        403,
        id="nginx: X-Real-IP with two addresses",
    ),
    pytest.param(
        "nginx",
        nginx(
            "GET",
            "/v1/hello",
            LISTED_IP,
            [("X-Forwarded-Uri", "/v1?api_key=i"), ("X-Forwarded-Method", "GET")],
        ),
        401,
        id="nginx: traefik's headers from the client carry no token",
    ),
    pytest.param(
        "traefik",
        traefik("GET", "/v1/hello", LISTED_IP, [("X-Original-URI", "/v1?api_key=i")]),
        401,
        id="traefik: nginx's X-Original-URI from the client carries no token",
    ),
    pytest.param(
        "traefik",
        traefik("GET", "/v1/hello", OTHER_IP, [("X-API-Key", "i"), ("X-Real-IP", LISTED_IP)]),
        403,
        id="traefik: the client's X-Real-IP is not read",
    ),
    pytest.param(
        "traefik",
        _replacing(
            traefik("GET", "/v1", OTHER_IP, [("X-API-Key", "i")]),
            "x-forwarded-for",
            f"{LISTED_IP}, {OTHER_IP}",
        ),
        403,
        id="traefik trusting forward headers: the client's hop on the left is not the client",
    ),
    pytest.param(
        "caddy",
        caddy(
            "GET",
            "/v1",
            OTHER_IP,
            [("X-API-Key", "i"), ("X-Real-IP", LISTED_IP), ("X-Forwarded-For", LISTED_IP)],
        ),
        403,
        id="caddy: the client's X-Real-IP is not read, its X-Forwarded-For replaced",
    ),
    pytest.param(
        "envoy",
        envoy("GET", "/v1", OTHER_IP, [("X-API-Key", "i"), ("X-Forwarded-For", LISTED_IP)]),
        403,
        id="envoy: the client's own X-Forwarded-For entry is left of the real one",
    ),
    pytest.param(
        "nginx",
        nginx("GET", "/v1", OTHER_IP, [("X-API-Key", "i"), ("X-API-Key", "open")]),
        403,
        id="nginx: two different token headers",
    ),
]


@pytest.mark.parametrize(("proxy", "forward", "status"), SPOOFING)
async def test_spoofing(validator: Validator, proxy: str, forward: Forward, status: int) -> None:
    reply = await ask(gate_for(validator, proxy), forward)
    assert reply.status_code == status
    if status == 403:
        assert_forbidden(reply)


ALLOWED_NGINX = nginx("GET", "/v1/hello", LISTED_IP, [("X-API-Key", "open")])
ALLOWED_TRAEFIK = traefik("GET", "/v1/hello", LISTED_IP, [("X-API-Key", "open")])
ALLOWED_CADDY = caddy("GET", "/v1/hello", LISTED_IP, [("X-API-Key", "open")])
ALLOWED_ENVOY = envoy("GET", "/v1/hello", LISTED_IP, [("X-API-Key", "open")])

# Requests the gate cannot understand, all for an unrestricted token: 403, never allowed.
MALFORMED = [
    pytest.param("nginx", _without(ALLOWED_NGINX, "x-original-uri"), id="nginx: no X-Original-URI"),
    pytest.param("nginx", _without(ALLOWED_NGINX, "x-original-method"), id="nginx: no X-Original-Method"),
    pytest.param("nginx", _without(ALLOWED_NGINX, "x-real-ip"), id="nginx: no X-Real-IP"),
    pytest.param(
        "nginx", _plus(ALLOWED_NGINX, ("X-Original-URI", "/v1/hello")), id="nginx: X-Original-URI twice"
    ),
    pytest.param("nginx", _plus(ALLOWED_NGINX, ("X-Original-Method", "GET")), id="nginx: method twice"),
    pytest.param("nginx", _replacing(ALLOWED_NGINX, "x-original-uri", ""), id="nginx: empty URI"),
    pytest.param(
        "nginx", _replacing(ALLOWED_NGINX, "x-original-uri", "v1/hello"), id="nginx: URI not a path"
    ),
    pytest.param(
        "nginx", _replacing(ALLOWED_NGINX, "x-original-uri", "/v1 /x"), id="nginx: URI with a space"
    ),
    pytest.param("nginx", _replacing(ALLOWED_NGINX, "x-original-uri", "ftp://h/v1"), id="nginx: not http(s)"),
    pytest.param(
        "nginx", _replacing(ALLOWED_NGINX, "x-original-method", "GE(T"), id="nginx: method not a token"
    ),
    pytest.param("nginx", _replacing(ALLOWED_NGINX, "x-original-method", ""), id="nginx: empty method"),
    pytest.param("traefik", _without(ALLOWED_TRAEFIK, "x-forwarded-uri"), id="traefik: no X-Forwarded-Uri"),
    pytest.param(
        "traefik", _without(ALLOWED_TRAEFIK, "x-forwarded-method"), id="traefik: no X-Forwarded-Method"
    ),
    pytest.param("traefik", _without(ALLOWED_TRAEFIK, "x-forwarded-for"), id="traefik: no X-Forwarded-For"),
    pytest.param("traefik", _plus(ALLOWED_TRAEFIK, ("X-Forwarded-Host", "b")), id="traefik: host twice"),
    pytest.param("traefik", _plus(ALLOWED_TRAEFIK, ("X-Forwarded-Proto", "http")), id="traefik: proto twice"),
    pytest.param("caddy", _without(ALLOWED_CADDY, "x-forwarded-uri"), id="caddy: no X-Forwarded-Uri"),
    pytest.param("caddy", _plus(ALLOWED_CADDY, ("X-Forwarded-Uri", "/v1?api_key=i")), id="caddy: URI twice"),
    pytest.param("traefik", ALLOWED_NGINX, id="nginx's headers to a traefik gate"),
    pytest.param("nginx", ALLOWED_TRAEFIK, id="traefik's headers to an nginx gate"),
    pytest.param("envoy", _without(ALLOWED_ENVOY, "x-forwarded-for"), id="envoy: no X-Forwarded-For"),
]


@pytest.mark.parametrize(("proxy", "forward"), MALFORMED)
async def test_a_request_the_gate_cannot_understand_is_403(
    validator: Validator, proxy: str, forward: Forward
) -> None:
    assert_forbidden(await ask(gate_for(validator, proxy), forward))


# The URI forms a proxy may pass on: (URI, the query the check reads)
URIS = [
    pytest.param("/v1/hello?api_key=i", b"api_key=i", id="origin form"),
    pytest.param("http://api.example.com/v1?api_key=i", b"api_key=i", id="absolute form"),
    pytest.param("HTTPS://api.example.com:8443?api_key=i", b"api_key=i", id="absolute form, no path"),
    pytest.param("/v1/%7Bx%7D?a=%20&api_key=i", b"a=%20&api_key=i", id="percent-encoded"),
    pytest.param("/v1/hello", b"", id="no query"),
    pytest.param("/v1/hello?", b"", id="empty query"),
]


@pytest.mark.parametrize(("uri", "query"), URIS)
async def test_original_uri_forms(validator: Validator, uri: str, query: bytes) -> None:
    gate = gate_for(validator, "nginx")
    assert isinstance(gate, Gate)
    forward = nginx("PATCH", uri, LISTED_IP, [("X-API-Key", "i"), ("Accept", "*/*")])
    scope = {
        "type": "http", "method": forward.method, "path": forward.path, "client": (PROXY, 1),
        "headers": [(n.lower().encode(), v.encode()) for n, v in forward.headers],
    }  # fmt: skip
    original = gate._original(scope)
    assert isinstance(original, dict)
    assert (original["method"], original["query_string"], original["client"]) == ("PATCH", query, (PROXY, 1))
    assert original["raw_path"].startswith(b"/")
    names = [name for name, _ in original["headers"]]
    assert b"x-original-uri" not in names and b"x-original-method" not in names
    assert (b"x-real-ip", LISTED_IP.encode()) in original["headers"]
    assert (b"accept", b"*/*") in original["headers"]
    reply = await ask(gate, nginx("PATCH", uri, LISTED_IP, [] if query else [("X-API-Key", "i")]))
    assert reply.status_code == 200


async def test_forwarded_host_and_proto_become_the_original_request(validator: Validator) -> None:
    gate = gate_for(validator, "traefik")
    assert isinstance(gate, Gate)
    forward = traefik("GET", "/v1", LISTED_IP, [("X-API-Key", "i")])
    scope = {
        "type": "http", "method": "GET", "path": "/check", "client": (PROXY, 1),
        "headers": [(n.lower().encode(), v.encode()) for n, v in forward.headers],
    }  # fmt: skip
    original = gate._original(scope)
    assert isinstance(original, dict)
    assert original["scheme"] == "https"
    hosts = [value for name, value in original["headers"] if name == b"host"]
    assert hosts == [b"api.example.com"]
    names = _names(original["headers"])
    for consumed in (b"x-forwarded-method", b"x-forwarded-uri", b"x-forwarded-proto", b"x-forwarded-host"):
        assert consumed not in names
    assert (b"x-forwarded-for", LISTED_IP.encode()) in original["headers"]
    assert (b"x-forwarded-server", b"traefik-7d9f") in original["headers"]


# --------------------------------------------------------------------------- peers


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize("peer", [STRANGER, LISTED_IP, "127.0.0.1", "::1"])
async def test_a_peer_outside_the_trusted_proxies_is_refused(
    validator: Validator, proxy: str, peer: str
) -> None:
    forward = PROXIES[proxy]("GET", "/v1/hello", LISTED_IP, [("X-API-Key", "open")])
    assert_forbidden(await ask(gate_for(validator, proxy), forward, peer=peer))


async def test_refusals_are_logged_once_per_interval(
    validator: Validator, caplog: pytest.LogCaptureFixture
) -> None:
    gate = gate_for(validator, "nginx")
    with caplog.at_level(logging.WARNING, logger="validator"):
        for _ in range(5):
            assert (await ask(gate, ALLOWED_NGINX, peer=STRANGER)).status_code == 403
            assert (await ask(gate, _without(ALLOWED_NGINX, "x-real-ip"))).status_code == 403
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "not in the trusted proxies" in line]) == 1, lines
    assert len([line for line in lines if "no x-real-ip header" in line]) == 1, lines
    assert "10.0.1.5" in lines[0]


# --------------------------------------------------------------------------- the gate's own endpoints


@pytest.mark.parametrize("proxy", ["nginx", "traefik", "caddy"])
async def test_healthz_from_a_trusted_peer(validator: Validator, proxy: str) -> None:
    gate = gate_for(validator, proxy)
    reply = await ask(gate, Forward("GET", "/healthz", []))
    assert (reply.status_code, reply.text) == (200, "ok")
    assert_forbidden(await ask(gate, Forward("GET", "/healthz", []), peer=STRANGER))


@pytest.mark.parametrize("proxy", ["nginx", "traefik", "caddy"])
async def test_a_forward_auth_request_to_healthz_is_checked(validator: Validator, proxy: str) -> None:
    # `proxy_pass http://gate;` (no URI) sends the client's path: a client's /healthz must not pass.
    forward = PROXIES[proxy]("GET", "/healthz", LISTED_IP, [])._replace(path="/healthz")
    assert (await ask(gate_for(validator, proxy), forward)).status_code == 401


async def test_envoy_healthz_is_204_which_envoy_does_not_take_as_allowed(validator: Validator) -> None:
    gate = gate_for(validator, "envoy")
    reply = await ask(gate, Forward("GET", "/healthz", []))
    assert (reply.status_code, reply.content) == (204, b"")
    # Its path is the client's path: a client's GET /healthz through Envoy gets this 204, never a 200.
    assert (
        await ask(gate, envoy("GET", "/healthz", LISTED_IP, [])._replace(path="/healthz"))
    ).status_code == 204


async def test_metrics_from_a_trusted_peer(validator: Validator) -> None:
    gate = gate_for(validator, "nginx")
    await ask(gate, ALLOWED_NGINX)
    reply = await ask(gate, Forward("GET", "/metrics", []))
    assert reply.status_code == 200
    assert (
        'token_access_decisions_total{outcome="allowed",reason="unrestricted",source="back_end"} 1.0'
        in reply.text
    )
    assert_forbidden(await ask(gate, Forward("GET", "/metrics", []), peer=STRANGER))
    # In Envoy mode the path is the client's: /metrics is checked like any other.
    assert (
        await ask(
            gate_for(validator, "envoy"), envoy("GET", "/metrics", LISTED_IP, [])._replace(path="/metrics")
        )
    ).status_code == 401


# --------------------------------------------------------------------------- settings and lifespan

SETTINGS = [
    pytest.param(
        {"proxy": "nginx", "trusted_proxies": []}, "trusted proxies are required", id="no trusted proxies"
    ),
    pytest.param(
        {"proxy": "nginx", "trusted_proxies": ""}, "trusted proxies are required", id="empty string"
    ),
    pytest.param(
        {"proxy": "haproxy", "trusted_proxies": [PROXY]}, "proxy must be one of", id="unknown proxy"
    ),
    pytest.param(
        {"proxy": "nginx", "trusted_proxies": ["10.0.0.0/33"]}, "not an IP address", id="bad network"
    ),
    pytest.param(
        {"proxy": "nginx", "trusted_proxies": [PROXY], "client_header": "X-Original-URI"},
        "already carries",
        id="client header is a forward-auth header",
    ),
    pytest.param(
        {"proxy": "nginx", "trusted_proxies": [PROXY], "client_header": "origin"},
        "cannot name the client",
        id="client header is Origin",
    ),
]


@pytest.mark.parametrize(("settings", "message"), SETTINGS)
async def test_bad_settings_are_refused(validator: Validator, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build_gate(validator, **settings)


async def test_trusted_proxies_as_a_comma_separated_string(validator: Validator) -> None:
    gate = build_gate(validator, proxy="nginx", trusted_proxies="192.0.2.1, 10.0.0.0/24")
    assert (await ask(gate, ALLOWED_NGINX)).status_code == 200


async def test_client_header_for_a_chain_behind_nginx(validator: Validator) -> None:
    gate = gate_for(validator, "nginx", client_header="x-forwarded-for")
    forward = _plus(
        _without(nginx("GET", "/v1", OTHER_IP, [("X-API-Key", "i")]), "x-real-ip"),
        ("X-Forwarded-For", f"{LISTED_IP}, 10.0.0.9"),
    )
    assert (await ask(gate, forward)).status_code == 200


async def test_lifespan_connects_and_closes_the_validator() -> None:
    validator = Validator.from_url(f"memory://gate-{uuid.uuid4()}")
    gate = gate_for(validator, "nginx")
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[Message] = []

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message)

    await gate({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert validator.lifecycle.closed


async def test_websocket_to_the_gate_is_closed(validator: Validator) -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    await gate_for(validator, "nginx")(
        {"type": "websocket", "client": (PROXY, 1), "headers": []}, receive, send
    )
    assert sent == [{"type": "websocket.close", "code": 1008}]


def _names(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in headers]


async def test_nginx_keeps_the_original_headers_and_drops_its_own(validator: Validator) -> None:
    gate = gate_for(validator, "nginx")
    assert isinstance(gate, Gate)
    forward = nginx("GET", "/v1", LISTED_IP, [("X-API-Key", "i"), ("User-Agent", "curl/8")])
    scope = {
        "type": "http", "method": "GET", "path": "/check", "client": (PROXY, 1),
        "headers": [(n.lower().encode(), v.encode()) for n, v in forward.headers],
    }  # fmt: skip
    original = gate._original(scope)
    assert isinstance(original, dict)
    assert _names(original["headers"]) == [b"host", b"x-real-ip", b"connection", b"x-api-key", b"user-agent"]
    assert (original["path"], original["scheme"]) == ("/v1", "http")
