"""Issue 23's edges, in process: what another component makes of a request must not get a
token past the check.

- P-TOKEN-ANY-METHOD: a preflight-shaped request (OPTIONS, Origin, Access-Control-Request-Method)
  that carries a token in any source is checked like any other; a true preflight (no token)
  passes as before. Middleware and gate.
- P-ONE-TOKEN-MANGLED-NAMES: a query name that PHP, Rack/Rails, Express `qs` or ASP.NET Core reads
  as the token parameter is that parameter: a decoy in a header beside the stolen token under
  such a name is refused; the token alone under it is checked. Middleware and gate.
- P-CORS-NEVER-WIDENS: `cors=True` (gate: `--cors`) adds CORS headers to the validator's own
  refusals only; the app's CORS policy (Starlette's CORSMiddleware here, for real) is left as
  it is.
- P-PARSE-CACHE-BOUNDED: a flood of distinct 100 KB Origins, Referers and client-address
  headers grows the process by a bounded amount.
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.unit.test_asgi import FORBIDDEN_BODY, LISTED_IP, OTHER_IP, Recorder, call
from tests.unit.test_gate import PROXIES, ask, assert_forbidden, gate_for
from validator import Admin, Restrictions, Validator
from validator.rules import request as request_rules
from validator.web.middleware import _MALFORMED, TokenAccessMiddleware, query_names

pytestmark = pytest.mark.timeout(120)

# "i": servers at LISTED_IP only; "d": pages on app.example.com only; "open": unrestricted;
# anything else is unknown, allowed by default (what makes a decoy dangerous).
STOLEN = "i"
DECOY = "decoy-unknown-token"
LISTED_ORIGIN = "https://app.example.com"
EVIL_ORIGIN = "https://evil.example.net"


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    async with Validator.from_url(f"memory://edges-{uuid.uuid4()}") as validator:
        admin = Admin(validator.store)
        await admin.put("i", Restrictions(ip_enabled=True, ips=[LISTED_IP]))
        await admin.put("d", Restrictions(domain_enabled=True, domains=["app.example.com"]))
        await admin.put("open", Restrictions())
        yield validator


# --------------------------------------------------------------------------- P-TOKEN-ANY-METHOD

PREFLIGHT_SHAPE = [(b"origin", b"https://x.example"), (b"access-control-request-method", b"GET")]

# (headers, query): the stolen token in each source the middleware reads.
IN_EACH_SOURCE = [
    pytest.param([(b"x-api-key", STOLEN.encode())], b"", id="X-API-Key"),
    pytest.param([(b"authorization", b"Bearer " + STOLEN.encode())], b"", id="bearer"),
    pytest.param([], b"api_key=" + STOLEN.encode(), id="query"),
    pytest.param([], b"api.key=" + STOLEN.encode(), id="query, PHP's spelling"),
]


@pytest.mark.promise("P-TOKEN-ANY-METHOD")
@pytest.mark.parametrize("preflight", ["pass", "answer"])
@pytest.mark.parametrize(("headers", "query"), IN_EACH_SOURCE)
async def test_a_preflight_shaped_request_with_a_token_is_checked(
    validator: Validator, preflight: Any, headers: list[tuple[bytes, bytes]], query: bytes
) -> None:
    app = Recorder()
    middleware = TokenAccessMiddleware(app, validator=validator, preflight=preflight)
    reply = await call(middleware, [*PREFLIGHT_SHAPE, *headers], method="OPTIONS", query=query)
    assert (reply.status, reply.body, app.scopes) == (403, FORBIDDEN_BODY, [])


@pytest.mark.promise("P-TOKEN-ANY-METHOD")
async def test_a_true_preflight_still_passes(validator: Validator) -> None:
    app = Recorder()
    passed = await call(TokenAccessMiddleware(app, validator=validator), PREFLIGHT_SHAPE, method="OPTIONS")
    assert (passed.status, len(app.scopes)) == (200, 1)
    answering = TokenAccessMiddleware(app, validator=validator, preflight="answer")
    answered = await call(answering, PREFLIGHT_SHAPE, method="OPTIONS")
    assert (answered.status, len(app.scopes)) == (204, 1)


@pytest.mark.promise("P-TOKEN-ANY-METHOD")
@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize(
    ("headers", "uri"),
    [
        pytest.param([("X-API-Key", STOLEN)], "/v1/data", id="X-API-Key"),
        pytest.param([("Authorization", f"Bearer {STOLEN}")], "/v1/data", id="bearer"),
        pytest.param([], f"/v1/data?api_key={STOLEN}", id="query"),
    ],
)
async def test_the_gate_checks_a_preflight_shaped_request_with_a_token(
    validator: Validator, proxy: str, headers: list[tuple[str, str]], uri: str
) -> None:
    shape = [("Origin", "https://x.example"), ("Access-Control-Request-Method", "GET")]
    reply = await ask(gate_for(validator, proxy), PROXIES[proxy]("OPTIONS", uri, OTHER_IP, shape + headers))
    assert_forbidden(reply)
    # The same request without a token is a preflight, and passes as before.
    true_preflight = PROXIES[proxy]("OPTIONS", "/v1/data", OTHER_IP, shape)
    reply = await ask(gate_for(validator, proxy), true_preflight)
    assert (reply.status_code, reply.headers["x-token-access"]) == (200, "preflight")


# --------------------------------------------------------------------------- P-ONE-TOKEN-MANGLED-NAMES

# Query names (as sent) that a mainstream framework reads as `api_key`, and which one.
TOKEN_NAMES = [
    pytest.param("api.key", id="PHP: . to _"),
    pytest.param("api+key", id="PHP: + (space) to _"),
    pytest.param("api%20key", id="PHP: %20 to _"),
    pytest.param("api%2Ekey", id="PHP: %2E to _"),
    pytest.param("api[key", id="PHP: unmatched [ to _"),
    pytest.param("api%5Bkey", id="PHP: encoded unmatched ["),
    pytest.param("api%80key", id="PHP: 0x80 to _ (as reported)"),
    pytest.param("api%9Fkey", id="PHP: 0x9F to _ (as reported)"),
    pytest.param("+api_key", id="PHP: leading space dropped"),
    pytest.param("%20%20api_key", id="PHP: leading spaces dropped"),
    pytest.param("api_key%00junk", id="PHP: the name ends at NUL"),
    pytest.param("api_key[]", id="PHP, Rack, qs: array"),
    pytest.param("api_key[0]", id="PHP, Rack, qs: indexed"),
    pytest.param("api_key[x]", id="PHP, Rack, qs: nested"),
    pytest.param("api_key%5B%5D", id="encoded brackets"),
    pytest.param("[api_key]", id="Rack 2: leading bracket"),
    pytest.param("api_key]", id="Rack 2: trailing bracket"),
    pytest.param("api_key.x", id="qs allowDots"),
    pytest.param("API_KEY", id="ASP.NET Core: case-insensitive"),
    pytest.param("Api_Key", id="ASP.NET Core: mixed case"),
    pytest.param("api%5Fkey", id="percent-encoded _"),
    pytest.param("%61pi_key", id="percent-encoded letter"),
]

# Names no mainstream framework reads as `api_key`: a decoy beside them changes nothing.
OTHER_NAMES = ["api", "apikey", "api_keys", "xapi_key", "api__key", "api[key]", "api-key"]


@pytest.mark.promise("P-ONE-TOKEN-MANGLED-NAMES")
@pytest.mark.parametrize("name", TOKEN_NAMES)
def test_names_read_as_the_token_parameter(name: str) -> None:
    assert b"api_key" in query_names(name.encode())


@pytest.mark.promise("P-ONE-TOKEN-MANGLED-NAMES")
@pytest.mark.parametrize("name", OTHER_NAMES)
def test_names_not_read_as_the_token_parameter(name: str) -> None:
    assert b"api_key" not in query_names(name.encode())


@pytest.mark.promise("P-ONE-TOKEN-MANGLED-NAMES")
@pytest.mark.parametrize("name", TOKEN_NAMES)
async def test_a_decoy_beside_the_token_under_a_mangled_name_is_refused(
    validator: Validator, name: str
) -> None:
    app = Recorder()
    middleware = TokenAccessMiddleware(app, validator=validator)
    query = f"{name}={STOLEN}".encode()
    # The decoy alone would pass (an unknown token, allowed by default), from anywhere.
    for decoy in ([(b"authorization", f"Bearer {DECOY}".encode())], [(b"x-api-key", DECOY.encode())]):
        reply = await call(middleware, decoy, query=query, client=(LISTED_IP, 1))
        assert (reply.status, reply.body, app.scopes) == (403, FORBIDDEN_BODY, [])
    # Alone, the token under that name is the token checked: not let through unread.
    optional = TokenAccessMiddleware(app, validator=validator, require_token=False)
    assert (await call(optional, query=query, client=(OTHER_IP, 1))).status == 403
    allowed = await call(optional, query=query, client=(LISTED_IP, 1))
    assert (allowed.status, app.scopes[-1]["state"]["api_token"]) == (200, STOLEN)


@pytest.mark.promise("P-ONE-TOKEN-MANGLED-NAMES")
@pytest.mark.parametrize(
    "query",
    [
        pytest.param(f"x=1;api_key={STOLEN}", id="Rack 2: ; separates pairs"),
        pytest.param(f"x=1;api.key={STOLEN}&y=2", id="Rack 2 and PHP"),
    ],
)
async def test_a_token_after_a_semicolon_is_a_token(validator: Validator, query: str) -> None:
    app = Recorder()
    middleware = TokenAccessMiddleware(app, validator=validator)
    reply = await call(
        middleware, [(b"x-api-key", DECOY.encode())], query=query.encode(), client=(LISTED_IP, 1)
    )
    assert (reply.status, app.scopes) == (403, [])


@pytest.mark.promise("P-ONE-TOKEN-MANGLED-NAMES")
@pytest.mark.parametrize("name", OTHER_NAMES)
async def test_other_names_are_not_the_token(validator: Validator, name: str) -> None:
    app = Recorder()
    middleware = TokenAccessMiddleware(app, validator=validator)
    reply = await call(middleware, [(b"x-api-key", DECOY.encode())], query=f"{name}={STOLEN}".encode())
    assert (reply.status, app.scopes[-1]["state"]["api_token"]) == (200, DECOY)


@pytest.mark.promise("P-ONE-TOKEN-MANGLED-NAMES")
async def test_the_underscore_spelling_of_the_token_header_is_the_token_header(validator: Validator) -> None:
    # CGI (PHP-FPM) reads X_API_Key as X-API-Key.
    app = Recorder()
    middleware = TokenAccessMiddleware(app, validator=validator)
    headers = [(b"x-api-key", DECOY.encode()), (b"x_api_key", STOLEN.encode())]
    assert (await call(middleware, headers, client=(LISTED_IP, 1))).status == 403


@pytest.mark.promise("P-ONE-TOKEN-MANGLED-NAMES")
@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize("name", ["api.key", "api+key", "api[key", "api%80key", "api_key[]", "API_KEY"])
async def test_the_gate_refuses_a_decoy_beside_a_mangled_name(
    validator: Validator, proxy: str, name: str
) -> None:
    forward = PROXIES[proxy](
        "GET", f"/v1/data?{name}={STOLEN}", LISTED_IP, [("Authorization", f"Bearer {DECOY}")]
    )
    assert_forbidden(await ask(gate_for(validator, proxy), forward))


# Hostile queries: pairs whose names are spellings of `api_key` (the tables above) or made of
# fragments of them, joined by `&` or `;`.
FRAGMENTS = [
    "api", "_", "key", "API", "KEY", ".", "+", " ", "[", "]", "%5B", "%5D", "%2E", "%20", "%5F",
    "%80", "%9F", "%00", "%61", "=", ";",
]  # fmt: skip
SPELLINGS: list[str] = [str(p.values[0]) for p in TOKEN_NAMES] + OTHER_NAMES + ["api_key"]
NAMES = st.one_of(st.sampled_from(SPELLINGS), st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join))
VALUES = st.sampled_from(["=i", "=x", "=", "", "=%69", "=i%3Bx", "=a+b"])
PAIRS = st.tuples(NAMES, VALUES).map(lambda pair: pair[0] + pair[1])
QUERIES = st.lists(st.tuples(PAIRS, st.sampled_from(["&", ";"])), max_size=4).map(
    lambda pairs: "".join(pair + sep for pair, sep in pairs)
)


def reference_token(query: bytes) -> bytes | str | None:
    """The one-token rule on the query alone, written plainly: every pair (split at `&`, and at
    `;` too) whose name is read as `api_key` by some framework gives a value; two different
    values are "malformed"; an empty one is no token."""
    pieces = []
    for pair in query.split(b"&"):
        pieces.append(pair)
        if b";" in pair:
            pieces.extend(pair.split(b";"))
    values = {
        unquote_to_bytes(value.replace(b"+", b" "))
        for key, _, value in (piece.partition(b"=") for piece in pieces)
        if b"api_key" in query_names(key)
    }
    if len(values) > 1:
        return "malformed"
    value = values.pop() if values else b""
    return value or None


@pytest.mark.promise("P-ONE-TOKEN-MANGLED-NAMES")
@settings(max_examples=3000, deadline=None)
@given(QUERIES)
def test_the_middleware_reads_the_query_as_the_plain_rule_does(text: str) -> None:
    # The middleware's fast paths (no escape, nothing a framework folds) must not miss a name.
    query = text.encode()
    middleware = TokenAccessMiddleware(Recorder(), validator=Validator.from_url("memory://props"))
    got = middleware._token({"query_string": query}, None, None)
    expected = reference_token(query)
    if expected == "malformed":
        assert got is _MALFORMED, query
    elif expected is None:
        assert got is None, query
    else:
        assert isinstance(expected, bytes)
        # A value outside visible ASCII is still the token read; `Validator.check` refuses it.
        assert got == expected.decode("latin-1"), query


# --------------------------------------------------------------------------- P-CORS-NEVER-WIDENS


def app_with_its_own_cors(validator: Validator) -> Any:
    """An app whose own policy is Starlette's CORSMiddleware, credentials allowed, for
    app.example.com only; the validator's middleware outside it, with `cors=True`."""

    async def data(request: Request) -> PlainTextResponse:
        return PlainTextResponse("secret data")

    app = Starlette(
        routes=[Route("/v1/data", data)],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=[LISTED_ORIGIN],
                allow_credentials=True,
                allow_methods=["GET"],
                allow_headers=["X-API-Key"],
            )
        ],
    )
    return TokenAccessMiddleware(app, validator=validator, cors=True)


async def get(app: Any, origin: str, token: str, client: str = OTHER_IP) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(client, 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        return await http.get("/v1/data", headers={"Origin": origin, "X-API-Key": token})


@pytest.mark.promise("P-CORS-NEVER-WIDENS")
@pytest.mark.parametrize("token", ["open", DECOY], ids=["unrestricted token", "invented token"])
async def test_cors_never_widens_the_apps_policy(validator: Validator, token: str) -> None:
    app = app_with_its_own_cors(validator)
    refused_by_the_app = await get(app, EVIL_ORIGIN, token)
    assert refused_by_the_app.status_code == 200  # the validator allows; the app's CORS refuses
    assert refused_by_the_app.headers["access-control-allow-credentials"] == "true"
    assert "access-control-allow-origin" not in refused_by_the_app.headers
    listed = await get(app, LISTED_ORIGIN, token)
    assert listed.headers.get_list("access-control-allow-origin") == [LISTED_ORIGIN]


@pytest.mark.promise("P-CORS-NEVER-WIDENS")
async def test_cors_makes_the_validators_own_refusals_readable(validator: Validator) -> None:
    app = app_with_its_own_cors(validator)
    denied = await get(app, EVIL_ORIGIN, "d")
    assert (denied.status_code, denied.content) == (403, FORBIDDEN_BODY)
    assert denied.headers["access-control-allow-origin"] == EVIL_ORIGIN
    assert denied.headers["access-control-expose-headers"] == "Access-Denied-Ref"
    assert "access-control-allow-credentials" not in denied.headers


@pytest.mark.promise("P-CORS-NEVER-WIDENS")
@pytest.mark.parametrize("proxy", PROXIES)
async def test_the_gates_cors_is_on_refusals_only(validator: Validator, proxy: str) -> None:
    gate = gate_for(validator, proxy, cors=True)
    for token in ("open", DECOY, "d"):
        forward = PROXIES[proxy](
            "GET", "/v1/data", OTHER_IP, [("X-API-Key", token), ("Origin", LISTED_ORIGIN)]
        )
        reply = await ask(gate, forward)
        assert (reply.status_code, reply.headers["x-token-access"]) == (200, "allowed")
        assert not [name for name in reply.headers if name.startswith("access-control-")]
    denied = PROXIES[proxy]("GET", "/v1/data", OTHER_IP, [("X-API-Key", "d"), ("Origin", EVIL_ORIGIN)])
    reply = await ask(gate, denied)
    assert_forbidden(reply)
    assert reply.headers["access-control-allow-origin"] == EVIL_ORIGIN


# --------------------------------------------------------------------------- P-PARSE-CACHE-BOUNDED


async def forgetful(scope: Any, receive: Any, send: Any) -> None:
    """The app: 200, and nothing of the request kept (unlike `Recorder`)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


FLOOD = 3_000
LARGE = 100_000
BOUND = 20 * 1024 * 1024


def large(i: int, alphabet: str = "a") -> str:
    head = f"{i:08d}"
    return head + alphabet * (LARGE - len(head))


async def flood_growth(middleware: TokenAccessMiddleware, request: Any) -> int:
    """The bytes Python holds after `FLOOD` requests (`request(i)`: headers, client) minus before."""
    gc.collect()
    tracemalloc.start()
    try:
        headers, client = request(-1)
        await call(middleware, headers, client=client)  # warm: first-use allocations are not the flood's
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(FLOOD):
            headers, client = request(i)
            await call(middleware, headers, client=client)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


Flood = tuple[list[tuple[bytes, bytes]], tuple[str, int]]


def origins(token: bytes) -> Any:
    def request(i: int) -> Flood:
        return [(b"x-api-key", token), (b"origin", b"https://" + large(i).encode())], (OTHER_IP, 1)

    return request


def referers(i: int) -> Flood:
    referer = b"https://app.example.com/" + large(i).encode()
    return [(b"x-api-key", b"d"), (b"referer", referer)], (OTHER_IP, 1)


def addresses(header: bytes) -> Any:
    # From the trusted proxy: a client-written hop of 100 KB of address characters.
    def request(i: int) -> Flood:
        return [(b"x-api-key", b"i"), (header, large(i, "1:").encode())], ("10.0.0.2", 1)

    return request


FLOODS = [
    pytest.param(origins(b"d"), id="Origin, denied (denial log)"),
    pytest.param(origins(b"invented"), id="Origin, unknown token allowed"),
    pytest.param(referers, id="Referer"),
    pytest.param(addresses(b"x-forwarded-for"), id="X-Forwarded-For hop (client address)"),
    pytest.param(addresses(b"x-real-ip"), id="X-Real-IP"),
]


@pytest.mark.promise("P-PARSE-CACHE-BOUNDED")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("request_of", FLOODS)
async def test_a_flood_of_large_distinct_headers_grows_memory_by_a_bounded_amount(
    validator: Validator, request_of: Any
) -> None:
    header = next(name for name, _ in request_of(0)[0] if name != b"x-api-key")
    proxy_header = "x-real-ip" if header == b"x-real-ip" else "x-forwarded-for"
    middleware = TokenAccessMiddleware(
        forgetful, validator=validator, trusted_proxies=["10.0.0.2"], proxy_header=proxy_header
    )
    growth = await flood_growth(middleware, request_of)
    # Before the bound: ~300 MB (each 100 KB value kept by a memo, or by the denial queue).
    print(f"growth after {FLOOD} distinct {LARGE // 1000} KB {header.decode()} values: {growth / 1e6:.2f} MB")
    assert growth < BOUND


@pytest.mark.promise("P-PARSE-CACHE-BOUNDED")
def test_only_short_values_are_remembered() -> None:
    short = "https://short.example"
    long = "https://long.example/" + "x" * request_rules.MAX_REMEMBERED
    assert request_rules.host_key(short) == "\nshort.example\n"
    assert request_rules.host_key(long) == "\nlong.example\n"
    assert short in request_rules.HOST_KEYS
    assert long not in request_rules.HOST_KEYS
