"""TokenAccessMiddleware, in process: docs/behaviour.md's decision table, tokens, responses, CORS, WebSocket.

Requests are raw ASGI calls (`call()`), so every header byte is under the test's control; one
test goes through httpx's ASGI transport to show the middleware under a real client library.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from validator import Admin, Reason, Restrictions, Source, Validator
from validator.errors import ConfigurationError
from validator.web.middleware import Message, Scope, TokenAccessMiddleware

FORBIDDEN_BODY = b'{"error": "Access denied. You don\'t have permission to access this."}'
LISTED_ORIGIN = b"https://app.example.com"
OTHER_ORIGIN = b"https://evil.test"
LISTED_IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"

# Token -> stored restrictions; "unknown" has none.
TOKENS = {
    "open": Restrictions(),
    "d": Restrictions(domain_enabled=True, domains=["app.example.com"]),
    "i": Restrictions(ip_enabled=True, ips=[LISTED_IP]),
    "di": Restrictions(domain_enabled=True, ip_enabled=True, domains=["app.example.com"], ips=[LISTED_IP]),
    "d-empty": Restrictions(domain_enabled=True),
    "i-empty": Restrictions(ip_enabled=True),
}

Headers = Sequence[tuple[bytes, bytes]]


class Recorder:
    """The protected app: answers 200 `ok` (or accepts the WebSocket) and keeps each scope."""

    def __init__(self, headers: Headers = ()) -> None:
        self.scopes: list[Scope] = []
        self.headers = list(headers)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            return
        if scope["type"] == "http":
            start = {"type": "http.response.start", "status": 200, "headers": list(self.headers)}
            await send(start)
            await send({"type": "http.response.body", "body": b"ok"})


class Reply:
    """What the client saw: the first message's status (or WebSocket close) and the body."""

    def __init__(self, messages: list[Message], scope: Scope) -> None:
        self.messages = messages
        self.scope = scope
        start = messages[0]
        self.type: str = start["type"]
        self.status: int | None = start.get("status")
        self.headers: list[tuple[bytes, bytes]] = list(start.get("headers", []))
        self.body = b"".join(m.get("body", b"") for m in messages[1:])

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, f"{name!r} sent {len(values)} times"
        return values[0] if values else None


async def call(
    app: Any,
    headers: Headers = (),
    *,
    method: str = "GET",
    query: bytes = b"",
    client: tuple[str, int] | None = (OTHER_IP, 50000),
    scope_type: str = "http",
    extra: dict[str, Any] | None = None,
) -> Reply:
    scope: Scope = {
        "type": scope_type,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http" if scope_type == "http" else "ws",
        "path": "/v1/hello",
        "raw_path": b"/v1/hello",
        "query_string": query,
        "root_path": "",
        "headers": list(headers),
        "client": client,
        "server": ("127.0.0.1", 8000),
        **(extra or {}),
    }
    if scope_type == "websocket":
        del scope["method"]
    messages: list[Message] = []

    async def receive() -> Message:
        if scope_type == "websocket":
            return {"type": "websocket.connect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return Reply(messages, scope)


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    async with Validator.from_url(f"memory://asgi-{uuid.uuid4()}") as validator:
        admin = Admin(validator.store)
        for token, restrictions in TOKENS.items():
            await admin.put(token, restrictions)
        yield validator


@pytest.fixture
def app() -> Recorder:
    return Recorder()


@pytest.fixture
def middleware(app: Recorder, validator: Validator) -> TokenAccessMiddleware:
    return TokenAccessMiddleware(app, validator=validator)


def key(token: str) -> tuple[bytes, bytes]:
    return (b"x-api-key", token.encode())


# --------------------------------------------------------------------------- the decision table

FRONT = "front"
BACK = "back"

# (token, request kind, origin or client address, allowed, reason)
DECISION_TABLE = [
    pytest.param("open", FRONT, OTHER_ORIGIN, True, Reason.UNRESTRICTED, id="off-off front allowed"),
    pytest.param("open", BACK, OTHER_IP, True, Reason.UNRESTRICTED, id="off-off back allowed"),
    pytest.param("d", FRONT, LISTED_ORIGIN, True, Reason.DOMAIN_LISTED, id="D front listed"),
    pytest.param("d", FRONT, OTHER_ORIGIN, False, Reason.DOMAIN_NOT_LISTED, id="D front not listed"),
    pytest.param("d", BACK, LISTED_IP, False, Reason.BACK_END_NOT_ALLOWED, id="D back denied"),
    pytest.param("i", FRONT, LISTED_ORIGIN, False, Reason.FRONT_END_NOT_ALLOWED, id="I front denied"),
    pytest.param("i", BACK, LISTED_IP, True, Reason.IP_LISTED, id="I back listed"),
    pytest.param("i", BACK, OTHER_IP, False, Reason.IP_NOT_LISTED, id="I back not listed"),
    pytest.param("di", FRONT, LISTED_ORIGIN, True, Reason.DOMAIN_LISTED, id="DI front listed"),
    pytest.param("di", FRONT, OTHER_ORIGIN, False, Reason.DOMAIN_NOT_LISTED, id="DI front not listed"),
    pytest.param("di", BACK, LISTED_IP, True, Reason.IP_LISTED, id="DI back listed"),
    pytest.param("di", BACK, OTHER_IP, False, Reason.IP_NOT_LISTED, id="DI back not listed"),
    pytest.param("d-empty", FRONT, LISTED_ORIGIN, False, Reason.DOMAIN_NOT_LISTED, id="D empty list front"),
    pytest.param("i-empty", BACK, LISTED_IP, False, Reason.IP_NOT_LISTED, id="I empty list back"),
    pytest.param("unknown", FRONT, OTHER_ORIGIN, True, Reason.UNKNOWN_TOKEN, id="unknown token front"),
    pytest.param("unknown", BACK, OTHER_IP, True, Reason.UNKNOWN_TOKEN, id="unknown token back"),
]


@pytest.mark.promise("P-DECISION-TABLE")
@pytest.mark.promise("P-DENIED-403")
@pytest.mark.promise("P-REASON-NEVER-TO-CLIENT")
@pytest.mark.parametrize(("token", "kind", "where", "allowed", "reason"), DECISION_TABLE)
async def test_decision_table(
    app: Recorder,
    middleware: TokenAccessMiddleware,
    token: str,
    kind: str,
    where: bytes | str,
    allowed: bool,
    reason: Reason,
) -> None:
    if kind == FRONT:
        assert isinstance(where, bytes)
        reply = await call(middleware, [key(token), (b"origin", where)], client=(LISTED_IP, 1))
    else:
        assert isinstance(where, str)
        reply = await call(middleware, [key(token)], client=(where, 1))
    decision = reply.scope["state"]["token_access"]
    assert (decision.allowed, decision.reason) == (allowed, reason)
    assert decision.source is (Source.FRONT_END if kind == FRONT else Source.BACK_END)
    if allowed:
        assert (reply.status, reply.body, len(app.scopes)) == (200, b"ok", 1)
    else:
        assert (reply.status, reply.body, app.scopes) == (403, FORBIDDEN_BODY, [])
        assert reply.header(b"content-type") == b"application/json"


# Each browser signal alone makes a request front-end; its domain comes from Origin, else Referer.
BROWSER_SIGNALS = [
    pytest.param([(b"origin", LISTED_ORIGIN)], 200, id="origin listed"),
    pytest.param([(b"referer", b"https://app.example.com/page?x=1")], 200, id="referer listed"),
    pytest.param([(b"referer", b"https://evil.test/")], 403, id="referer not listed"),
    pytest.param(
        [(b"origin", OTHER_ORIGIN), (b"referer", b"https://app.example.com/")], 403, id="origin wins"
    ),
    pytest.param([(b"referer", b"")], 403, id="empty referer is a signal without a domain"),
    pytest.param([(b"sec-fetch-site", b"cross-site")], 403, id="sec-fetch-site alone has no domain"),
    pytest.param([(b"sec-fetch-storage-access", b"none")], 403, id="any sec-fetch-* header"),
    pytest.param([(b"origin", b"")], 403, id="empty origin is no signal: back end, not listed"),
]


@pytest.mark.promise("P-FRONT-OR-BACK-END")
@pytest.mark.parametrize(("headers", "status"), BROWSER_SIGNALS)
async def test_browser_signals(middleware: TokenAccessMiddleware, headers: Headers, status: int) -> None:
    assert (await call(middleware, [key("d"), *headers], client=(LISTED_IP, 1))).status == status


# Headers the header loop finds in its table of common names (no Sec-Fetch-* prefix test for them)
# and rarer ones that it tests: neither kind is a browser signal, any sec-fetch-* name is one.
NOT_SIGNALS = [
    (b"host", b"api.example.com"),
    (b"user-agent", b"curl/8.5"),
    (b"accept", b"*/*"),
    (b"sec-ch-ua", b'"Chromium";v="120"'),
    (b"sec-websocket-version", b"13"),
    (b"x-forwarded-for", OTHER_IP.encode()),  # no trusted proxy: not read at all
    (b"authorization", b"Basic dTpw"),
    (b"x-custom", b"1"),
    (b"sec-fetchx", b"1"),
    (b"sec-fetch", b"1"),
]


@pytest.mark.promise("P-FRONT-OR-BACK-END")
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "signal",
    [b"sec-fetch-site", b"sec-fetch-mode", b"sec-fetch-dest", b"sec-fetch-user", b"sec-fetch-storage-access"],
)
async def test_sec_fetch_after_other_headers(middleware: TokenAccessMiddleware, signal: bytes) -> None:
    # Token "i" allows back-end requests from LISTED_IP and denies every front-end one.
    back_end = await call(middleware, [*NOT_SIGNALS, key("i")], client=(LISTED_IP, 1))
    assert back_end.status == 200
    front_end = await call(middleware, [*NOT_SIGNALS, key("i"), (signal, b"x")], client=(LISTED_IP, 1))
    assert front_end.status == 403
    assert front_end.scope["state"]["token_access"].reason is Reason.FRONT_END_NOT_ALLOWED


@pytest.mark.timeout(30)
async def test_a_common_header_name_can_be_the_token_header(app: Recorder, validator: Validator) -> None:
    middleware = TokenAccessMiddleware(
        app, validator=validator, token_header="User-Agent", token_sources=["header"]
    )
    assert (await call(middleware, [(b"user-agent", b"open")])).status == 200
    assert (await call(middleware, [(b"user-agent", b"open"), (b"user-agent", b"d")])).status == 403
    # `authorization` is not a token source here: a bearer token beside it is not read.
    assert (await call(middleware, [(b"authorization", b"Bearer d"), (b"user-agent", b"open")])).status == 200


# --------------------------------------------------------------------------- tokens


TOKEN_PLACES = [
    pytest.param([(b"authorization", b"Bearer i")], b"", id="bearer"),
    pytest.param([(b"authorization", b"bearer   i  ")], b"", id="bearer scheme is case-insensitive"),
    pytest.param([(b"x-api-key", b"i")], b"", id="x-api-key"),
    pytest.param([], b"api_key=i", id="query"),
    pytest.param([], b"a=1&api_key=i&b=2", id="query among others"),
    pytest.param([], b"api%5Fkey=%69", id="query percent-encoded"),
    pytest.param([], b"api_key=i&api_key=i", id="query repeated with the same value"),
    pytest.param([(b"x-api-key", b"i"), (b"x-api-key", b"i")], b"", id="header repeated with the same value"),
    pytest.param([(b"authorization", b"Basic dTpw"), (b"x-api-key", b"i")], b"", id="basic auth is skipped"),
    pytest.param([(b"authorization", b"Bearer "), (b"x-api-key", b"i")], b"", id="empty bearer is skipped"),
    pytest.param([(b"x-api-key", b"  ")], b"api_key=i", id="blank header is skipped"),
    pytest.param([(b"x-api-key", b" \ti  ")], b"", id="header alone, stripped"),
]


@pytest.mark.parametrize(("headers", "query"), TOKEN_PLACES)
async def test_token_is_found(middleware: TokenAccessMiddleware, headers: Headers, query: bytes) -> None:
    reply = await call(middleware, headers, query=query, client=(LISTED_IP, 1))
    assert reply.status == 200
    assert reply.scope["state"]["api_token"] == "i"
    assert reply.scope["state"]["token_access"].reason is Reason.IP_LISTED


NO_TOKEN = [
    pytest.param([], b"", id="nothing"),
    pytest.param([(b"authorization", b"Basic dTpw")], b"", id="basic auth only"),
    pytest.param([(b"authorization", b"Bearer")], b"", id="bearer without token"),
    pytest.param([(b"x-api-key", b"")], b"", id="empty header"),
    pytest.param([(b"x-api-key", b" \t ")], b"", id="blank header alone"),
    pytest.param([], b"api_key=", id="empty query value"),
    pytest.param([], b"api_keyx=i&xapi_key=i", id="similar query names"),
    pytest.param([(b"api-key", b"i")], b"", id="other header name"),
]


@pytest.mark.promise("P-NO-TOKEN-401")
@pytest.mark.parametrize(("headers", "query"), NO_TOKEN)
async def test_no_token_is_401(
    app: Recorder, middleware: TokenAccessMiddleware, headers: Headers, query: bytes
) -> None:
    reply = await call(middleware, headers, query=query)
    assert (reply.status, json.loads(reply.body), app.scopes) == (401, {"error": "API token required."}, [])
    assert reply.header(b"content-type") == b"application/json"
    assert reply.header(b"www-authenticate") == b"Bearer"


@pytest.mark.promise("P-NO-TOKEN-401")
async def test_no_token_passes_through_for_public_routes(app: Recorder, validator: Validator) -> None:
    middleware = TokenAccessMiddleware(app, validator=validator, require_token=False)
    reply = await call(middleware)
    assert reply.status == 200
    assert reply.scope["state"] == {"token_access": None, "api_token": None}


@pytest.mark.promise("P-NO-TOKEN-401")
async def test_public_routes_still_check_a_token_that_is_sent(app: Recorder, validator: Validator) -> None:
    middleware = TokenAccessMiddleware(app, validator=validator, require_token=False)
    assert (await call(middleware, [key("i")])).status == 403


# Every configured source is read (docs/behaviour.md, "One token per request"): different tokens in two of
# them are refused, whatever the order; a source left out is not read at all.
SOURCES = [
    pytest.param(("bearer", "header", "query"), 403, None, id="default: all three differ"),
    pytest.param(("header", "bearer"), 403, None, id="two differ"),
    pytest.param(("query", "header", "bearer"), 403, None, id="order does not matter"),
    pytest.param(("query",), 200, "open", id="query only"),
]


@pytest.mark.promise("P-ONE-TOKEN")
@pytest.mark.parametrize(("sources", "status", "used"), SOURCES)
async def test_token_sources(
    app: Recorder, validator: Validator, sources: Any, status: int, used: str | None
) -> None:
    middleware = TokenAccessMiddleware(app, validator=validator, token_sources=sources)
    headers = [(b"authorization", b"Bearer i"), (b"x-api-key", b"d")]
    reply = await call(middleware, headers, query=b"api_key=open")
    assert reply.status == status
    assert reply.scope.get("state", {}).get("api_token") == used


async def test_an_unused_source_is_not_read(app: Recorder, validator: Validator) -> None:
    middleware = TokenAccessMiddleware(app, validator=validator, token_sources=["bearer"])
    assert (await call(middleware, [key("open")], query=b"api_key=open")).status == 401


async def test_custom_header_and_query_names(app: Recorder, validator: Validator) -> None:
    middleware = TokenAccessMiddleware(app, validator=validator, token_header="X-Token", token_query="key")
    assert (await call(middleware, [(b"x-token", b"open")])).status == 200
    assert (await call(middleware, query=b"key=open")).status == 200
    assert (await call(middleware, [key("open")], query=b"api_key=open")).status == 401


# Two different tokens in one source: which one would the app use? Neither is let through.
CONFLICTING_TOKENS = [
    pytest.param([(b"x-api-key", b"open"), (b"x-api-key", b"i")], b"", id="two x-api-key"),
    pytest.param([(b"authorization", b"Bearer open"), (b"authorization", b"Bearer i")], b"", id="two bearer"),
    pytest.param([], b"api_key=open&api_key=i", id="two query values"),
    pytest.param([], b"api_key=open&api%5fkey=i", id="query value hidden by encoding"),
    pytest.param([(b"x-api-key", b"x" * 513)], b"", id="token longer than max_token_length"),
]


@pytest.mark.promise("P-ONE-TOKEN")
@pytest.mark.promise("P-DENIED-403")
@pytest.mark.parametrize(("headers", "query"), CONFLICTING_TOKENS)
async def test_ambiguous_token_is_denied(
    app: Recorder, middleware: TokenAccessMiddleware, headers: Headers, query: bytes
) -> None:
    reply = await call(middleware, headers, query=query)
    assert (reply.status, reply.body, app.scopes) == (403, FORBIDDEN_BODY, [])


@pytest.mark.promise("P-UNKNOWN-TOKEN")
async def test_unknown_tokens_denied_when_configured(app: Recorder) -> None:
    async with Validator.from_url(f"memory://asgi-{uuid.uuid4()}", unknown_token="deny") as validator:
        reply = await call(TokenAccessMiddleware(app, validator=validator), [key("nobody")])
    assert (reply.status, reply.body) == (403, FORBIDDEN_BODY)


# --------------------------------------------------------------------------- store failures


@pytest.mark.promise("P-FAIL-CLOSED")
async def test_store_unreachable_is_503() -> None:
    app = Recorder()
    async with Validator.from_url("redis://127.0.0.1:1/0", timeout=0.2, connect_timeout=0.2) as validator:
        reply = await call(TokenAccessMiddleware(app, validator=validator), [key("open")])
    assert (reply.status, app.scopes) == (503, [])
    assert json.loads(reply.body) == {"error": "Access check unavailable. Try again later."}
    assert reply.header(b"content-type") == b"application/json"


@pytest.mark.promise("P-FAIL-CLOSED")
async def test_store_unreachable_fails_open_when_the_validator_does() -> None:
    app = Recorder()
    url = "redis://127.0.0.1:1/0"
    async with Validator.from_url(url, timeout=0.2, connect_timeout=0.2, fail_open=True) as validator:
        reply = await call(TokenAccessMiddleware(app, validator=validator), [key("open")])
    assert reply.status == 200
    assert reply.scope["state"]["token_access"].reason is Reason.STORE_UNAVAILABLE


async def test_a_cached_token_is_decided_without_the_store(
    middleware: TokenAccessMiddleware, validator: Validator
) -> None:
    await call(middleware, [key("i")], client=(LISTED_IP, 1))
    loads = validator.cache.loads_started
    for client in (LISTED_IP, OTHER_IP):
        await call(middleware, [key("i")], client=(client, 1))
    assert validator.cache.loads_started == loads


# --------------------------------------------------------------------------- scope state


async def test_decision_joins_existing_state(app: Recorder, middleware: TokenAccessMiddleware) -> None:
    reply = await call(middleware, [key("open")], extra={"state": {"db": "pool"}})
    assert reply.scope["state"]["db"] == "pool"
    assert reply.scope["state"]["token_access"].reason is Reason.UNRESTRICTED
    assert app.scopes[0] is reply.scope


@pytest.mark.parametrize("scope_type", ["lifespan", "custom"])
async def test_other_scopes_pass_through(scope_type: str, validator: Validator) -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await TokenAccessMiddleware(inner, validator=validator)({"type": scope_type}, None, None)  # type: ignore[arg-type]
    assert seen == [scope_type]


async def test_through_httpx(validator: Validator) -> None:
    app = Recorder()
    middleware = TokenAccessMiddleware(app, validator=validator)
    transport = httpx.ASGITransport(app=middleware, client=(LISTED_IP, 123))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        allowed = await client.get("/v1/hello", headers={"Authorization": "Bearer i"})
        denied = await client.get("/v1/hello", params={"api_key": "d"})
        missing = await client.get("/v1/hello")
    assert (allowed.status_code, allowed.text) == (200, "ok")
    assert (denied.status_code, denied.content) == (403, FORBIDDEN_BODY)
    assert denied.headers["content-type"] == "application/json"
    assert missing.status_code == 401


# --------------------------------------------------------------------------- CORS


@pytest.fixture
def cors(app: Recorder, validator: Validator) -> TokenAccessMiddleware:
    return TokenAccessMiddleware(app, validator=validator, cors=True, preflight="answer")


CORS_CASES = [
    pytest.param("d", OTHER_ORIGIN, 403, id="denied front end: page script can read the 403"),
    pytest.param("i", LISTED_ORIGIN, 403, id="front end of an IP-only token"),
    pytest.param("i", b"null", 403, id="opaque origin echoed as null"),
]


@pytest.mark.promise("P-CORS-EXPOSES-REF")
@pytest.mark.parametrize(("token", "origin", "status"), CORS_CASES)
async def test_cors_echoes_the_origin_on_refusals(
    cors: TokenAccessMiddleware, token: str, origin: bytes, status: int
) -> None:
    reply = await call(cors, [key(token), (b"origin", origin)])
    assert reply.status == status
    assert reply.header(b"access-control-allow-origin") == origin
    assert reply.header(b"vary") == b"Origin"


@pytest.mark.promise("P-CORS-NEVER-WIDENS")
@pytest.mark.parametrize(
    ("token", "origin"),
    [
        pytest.param("d", LISTED_ORIGIN, id="listed origin"),
        pytest.param("open", OTHER_ORIGIN, id="unrestricted token"),
        pytest.param("invented", OTHER_ORIGIN, id="unknown token, allowed by default"),
        pytest.param("open", b"null", id="opaque origin"),
    ],
)
async def test_cors_adds_nothing_to_allowed_responses(
    cors: TokenAccessMiddleware, token: str, origin: bytes
) -> None:
    reply = await call(cors, [key(token), (b"origin", origin)])
    assert reply.status == 200
    assert reply.headers == []  # the app's headers (none), as it sent them


async def test_cors_on_401(cors: TokenAccessMiddleware) -> None:
    reply = await call(cors, [(b"origin", OTHER_ORIGIN)])
    assert (reply.status, reply.header(b"access-control-allow-origin")) == (401, OTHER_ORIGIN)


NO_CORS = [
    pytest.param(True, [key("open")], id="back-end request"),
    pytest.param(True, [key("open"), (b"referer", b"https://app.example.com/")], id="same-origin: no Origin"),
    pytest.param(True, [key("open"), (b"origin", b"https://app.example.com\x7f")], id="origin not echoable"),
    pytest.param(False, [key("open"), (b"origin", LISTED_ORIGIN)], id="cors off, allowed"),
    pytest.param(False, [key("d"), (b"origin", OTHER_ORIGIN)], id="cors off, denied"),
]


@pytest.mark.parametrize(("enabled", "headers"), NO_CORS)
async def test_no_cors_headers(app: Recorder, validator: Validator, enabled: bool, headers: Headers) -> None:
    reply = await call(TokenAccessMiddleware(app, validator=validator, cors=enabled), headers)
    assert reply.header(b"access-control-allow-origin") is None
    assert reply.header(b"vary") is None


@pytest.mark.promise("P-CORS-NEVER-WIDENS")
async def test_cors_leaves_the_apps_own_cors_headers_as_they_are(validator: Validator) -> None:
    own = [(b"Access-Control-Allow-Origin", b"https://app.example.com"), (b"Vary", b"Accept-Encoding")]
    reply = await call(
        TokenAccessMiddleware(Recorder(own), validator=validator, cors=True),
        [key("d"), (b"origin", LISTED_ORIGIN)],
    )
    assert reply.headers == own


PREFLIGHT = [(b"origin", OTHER_ORIGIN), (b"access-control-request-method", b"GET")]


@pytest.mark.promise("P-PREFLIGHT-PASSES")
async def test_preflight_answered(app: Recorder, cors: TokenAccessMiddleware) -> None:
    reply = await call(
        cors, [*PREFLIGHT, (b"access-control-request-headers", b"x-api-key")], method="OPTIONS"
    )
    assert (reply.status, reply.body, app.scopes) == (204, b"", [])
    assert reply.header(b"access-control-allow-origin") == OTHER_ORIGIN
    assert reply.header(b"access-control-allow-headers") == b"Authorization, X-API-Key, Content-Type"
    assert reply.header(b"access-control-allow-methods") == b"GET, HEAD, POST, PUT, PATCH, DELETE"
    assert reply.header(b"access-control-max-age") == b"600"
    assert reply.header(b"vary") == b"Origin"


@pytest.mark.promise("P-PREFLIGHT-PASSES")
async def test_preflight_settings(app: Recorder, validator: Validator) -> None:
    middleware = TokenAccessMiddleware(
        app,
        validator=validator,
        preflight="answer",
        token_header="X-Token",
        cors_allow_methods=["GET"],
        cors_max_age=0,
    )
    reply = await call(middleware, PREFLIGHT, method="OPTIONS")
    assert reply.header(b"access-control-allow-methods") == b"GET"
    assert reply.header(b"access-control-allow-headers") == b"Authorization, X-Token, Content-Type"
    assert reply.header(b"access-control-max-age") == b"0"


@pytest.mark.promise("P-PREFLIGHT-PASSES")
async def test_preflight_passed_to_the_app_by_default(
    app: Recorder, middleware: TokenAccessMiddleware
) -> None:
    reply = await call(middleware, PREFLIGHT, method="OPTIONS")
    assert (reply.status, len(app.scopes)) == (200, 1)


NOT_PREFLIGHT = [
    pytest.param("OPTIONS", [(b"origin", OTHER_ORIGIN)], id="no access-control-request-method"),
    pytest.param("OPTIONS", [(b"access-control-request-method", b"GET")], id="no origin"),
    pytest.param("GET", PREFLIGHT, id="not OPTIONS"),
]


@pytest.mark.promise("P-PREFLIGHT-PASSES")
@pytest.mark.parametrize(("method", "headers"), NOT_PREFLIGHT)
async def test_not_a_preflight_needs_a_token(
    cors: TokenAccessMiddleware, method: str, headers: Headers
) -> None:
    assert (await call(cors, headers, method=method)).status == 401


# --------------------------------------------------------------------------- WebSocket


async def test_websocket_allowed(app: Recorder, middleware: TokenAccessMiddleware) -> None:
    reply = await call(
        middleware, query=b"api_key=d", headers=[(b"origin", LISTED_ORIGIN)], scope_type="websocket"
    )
    assert reply.type == "websocket.accept"
    assert reply.scope["state"]["token_access"].reason is Reason.DOMAIN_LISTED


WEBSOCKET_REFUSED = [
    pytest.param([(b"origin", OTHER_ORIGIN)], b"api_key=d", 403, id="domain not listed"),
    pytest.param([(b"origin", OTHER_ORIGIN)], b"", 401, id="no token"),
    pytest.param(
        [(b"origin", OTHER_ORIGIN), (b"origin", LISTED_ORIGIN)], b"api_key=d", 403, id="two origins"
    ),
]


@pytest.mark.promise("P-WEBSOCKET-REFUSED")
@pytest.mark.parametrize(("headers", "query", "status"), WEBSOCKET_REFUSED)
async def test_websocket_denied_before_accept(
    app: Recorder, middleware: TokenAccessMiddleware, headers: Headers, query: bytes, status: int
) -> None:
    reply = await call(middleware, headers, query=query, scope_type="websocket")
    assert [m["type"] for m in reply.messages] == ["websocket.close"]
    assert reply.messages[0]["code"] == 1008
    assert app.scopes == []


@pytest.mark.promise("P-WEBSOCKET-REFUSED")
@pytest.mark.parametrize(("headers", "query", "status"), WEBSOCKET_REFUSED)
async def test_websocket_denial_response_when_the_server_supports_it(
    app: Recorder, middleware: TokenAccessMiddleware, headers: Headers, query: bytes, status: int
) -> None:
    extensions: dict[str, Any] = {"extensions": {"websocket.http.response": {}}}
    reply = await call(middleware, headers, query=query, scope_type="websocket", extra=extensions)
    assert [m["type"] for m in reply.messages] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert reply.status == status
    assert reply.header(b"content-type") == b"application/json"
    if status == 403:
        assert reply.body == FORBIDDEN_BODY
    assert app.scopes == []


# --------------------------------------------------------------------------- configuration

BAD_SETTINGS = [
    pytest.param({"token_sources": []}, id="no token source"),
    pytest.param({"token_sources": ["cookie"]}, id="unknown token source"),
    pytest.param({"token_sources": ["query", "query"]}, id="repeated token source"),
    pytest.param({"token_header": ""}, id="empty header name"),
    pytest.param({"token_header": "X API Key"}, id="header name with spaces"),
    pytest.param({"token_header": "Origin"}, id="header name taken by a browser signal"),
    pytest.param({"token_header": "X-Forwarded-For"}, id="header name taken by proxies"),
    pytest.param({"token_query": ""}, id="empty query name"),
    pytest.param({"max_token_length": 0}, id="max_token_length zero"),
    pytest.param({"trusted_proxies": ["localhost"]}, id="proxy by name"),
    pytest.param({"trusted_proxies": ["10.0.0.1/8"]}, id="proxy network with host bits"),
    pytest.param({"trusted_proxies": "*"}, id="trust everyone"),
    pytest.param({"proxy_header": "origin"}, id="a proxy header that means something else"),
    pytest.param({"proxy_header": "x real ip"}, id="a proxy header that is no header name"),
    pytest.param({"preflight": "deny"}, id="unknown preflight mode"),
    pytest.param({"cors_allow_methods": ["GET, POST"]}, id="methods as one string"),
    pytest.param({"cors_allow_headers": ["X-Ok", "Bad\r\nHeader"]}, id="header with CRLF"),
    pytest.param({"cors_max_age": -1}, id="negative max age"),
]


@pytest.mark.parametrize("settings", BAD_SETTINGS)
def test_bad_settings_refused_at_construction(settings: dict[str, Any], app: Recorder) -> None:
    validator = Validator.from_url("memory://asgi-settings")
    with pytest.raises(ConfigurationError):
        TokenAccessMiddleware(app, validator=validator, **settings)


# --------------------------------------------------------------------------- report-only rollout


@pytest.mark.promise("P-REPORT-ONLY")
@pytest.mark.parametrize(
    ("client_ip", "reported"),
    [pytest.param(OTHER_IP, True, id="would be denied"), pytest.param(LISTED_IP, False, id="allowed anyway")],
)
async def test_report_only_passes_and_marks(
    app: Recorder, validator: Validator, client_ip: str, reported: bool
) -> None:
    middleware = TokenAccessMiddleware(app, validator=validator, report_only=True)
    for _ in range(2):  # a miss, then a cache hit
        reply = await call(middleware, [key("i")], client=(client_ip, 50000))
        assert reply.status == 200
        decision = reply.scope["state"]["token_access"]
        assert decision.allowed
        assert decision.reported is reported
        assert decision.reason is (Reason.IP_NOT_LISTED if reported else Reason.IP_LISTED)
    assert validator.denial_log is not None
    await validator.denial_log.flush()
    assert len(await validator.store.denials(validator.store.token_hash("i"))) == (2 if reported else 0)


async def test_without_report_only_the_same_request_is_denied(app: Recorder, validator: Validator) -> None:
    reply = await call(TokenAccessMiddleware(app, validator=validator), [key("i")])
    assert reply.status == 403
