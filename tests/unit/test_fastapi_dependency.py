"""TokenAccess, the FastAPI dependency: docs/behaviour.md's decision table, the middleware's exact answers,
OpenAPI security schemes, public routes, decoy tokens, report-only, CORS, a forgotten install.

Requests go through httpx's ASGI transport into a real FastAPI app on a memory:// store; the
same requests through `TokenAccessMiddleware` give the reference answers.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, WebSocket

from tests.unit.test_asgi import (
    DECISION_TABLE,
    FORBIDDEN_BODY,
    FRONT,
    LISTED_IP,
    LISTED_ORIGIN,
    OTHER_IP,
    OTHER_ORIGIN,
    TOKENS,
    Recorder,
)
from validator import Admin, Reason, Source, Validator
from validator.errors import ConfigurationError
from validator.web.fastapi import Access, TokenAccess
from validator.web.middleware import TokenAccessMiddleware

pytestmark = [pytest.mark.timeout(30), pytest.mark.promise("P-FASTAPI-SAME-ANSWERS")]

UNAUTHORIZED_BODY = b'{"error": "API token required."}'
UNAVAILABLE_BODY = b'{"error": "Access check unavailable. Try again later."}'
DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every read fails at once

Headers = Sequence[tuple[str, str]]


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    async with Validator.from_url(f"memory://fastapi-{uuid.uuid4()}") as validator:
        admin = Admin(validator.store)
        for token, restrictions in TOKENS.items():
            await admin.put(token, restrictions)
        yield validator


def build(access: TokenAccess, *, install: bool = True) -> FastAPI:
    """An app with a protected route, a public one, an OPTIONS route and a WebSocket.

    (`Depends` as a default, not in `Annotated`: under `from __future__ import annotations`
    FastAPI evaluates annotations in the module's globals, where `access` is not.)"""
    app = FastAPI()
    if install:
        access.install(app)

    @app.get("/v1/hello")
    async def hello(checked: Access = Depends(access)) -> dict[str, Any]:  # noqa: B008
        decision = checked.decision
        if decision is None:
            return {"decision": None, "token": checked.token}
        return {
            "allowed": decision.allowed,
            "reason": decision.reason.value,
            "source": decision.source.value if decision.source else None,
            "reported": decision.reported,
            "token": checked.token,
        }

    @app.options("/v1/hello", dependencies=[Depends(access)])
    async def options() -> dict[str, str]:
        return {"reached": "options"}

    @app.get("/public")
    async def public() -> dict[str, str]:
        return {"public": "yes"}

    @app.websocket("/ws")
    async def socket(websocket: WebSocket, checked: Access = Depends(access)) -> None:  # noqa: B008
        await websocket.accept()
        await websocket.send_text("reached")
        await websocket.close()

    return app


async def send(
    app: Any,
    headers: Headers = (),
    *,
    path: str = "/v1/hello",
    method: str = "GET",
    client: str = OTHER_IP,
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(client, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        return await http.request(method, path, headers=list(headers))


def key(token: str) -> tuple[str, str]:
    return ("x-api-key", token)


# --------------------------------------------------------------------------- the decision table


@pytest.mark.parametrize(("token", "kind", "where", "allowed", "reason"), DECISION_TABLE)
async def test_decision_table(
    validator: Validator, token: str, kind: str, where: bytes | str, allowed: bool, reason: Reason
) -> None:
    app = build(TokenAccess(validator))
    if kind == FRONT:
        assert isinstance(where, bytes)
        reply = await send(app, [key(token), ("origin", where.decode())], client=LISTED_IP)
    else:
        assert isinstance(where, str)
        reply = await send(app, [key(token)], client=where)
    if allowed:
        assert reply.status_code == 200
        assert reply.json() == {
            "allowed": True,
            "reason": reason.value,
            "source": (Source.FRONT_END if kind == FRONT else Source.BACK_END).value,
            "reported": False,
            "token": token,
        }
    else:
        assert (reply.status_code, reply.content) == (403, FORBIDDEN_BODY)
        assert reply.headers["content-type"] == "application/json"


# --------------------------------------------------------------------------- the middleware's answers

# (request headers, the validator's store, status): each answered exactly as the middleware does.
SAME_ANSWERS = [
    pytest.param([], None, 401, id="no token"),
    pytest.param([key("d")], None, 403, id="denied"),
    pytest.param([key("d"), ("origin", "https://evil.test")], None, 403, id="denied from a page"),
    pytest.param([key("a"), ("authorization", "Bearer b")], None, 403, id="decoy beside a token"),
    pytest.param([key("x" * 600)], None, 403, id="token over max_token_length"),
    pytest.param([key("tok\x7f")], None, 403, id="token with a control character"),
    pytest.param(
        [key("open"), ("origin", "https://a.test"), ("origin", "https://b.test")], None, 403, id="two origins"
    ),
    pytest.param([key("open"), ("origin", "https://a.test, https://b.test")], None, 403, id="origin list"),
    pytest.param([key("open")], DOWN, 503, id="store unreachable"),
]


def shape(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The headers in order, with the denial's per-request reference (a random id) blanked."""
    return [(k, "<per request>" if k == "access-denied-ref" else v) for k, v in headers.multi_items()]


@pytest.mark.parametrize(("headers", "store", "status"), SAME_ANSWERS)
@pytest.mark.parametrize("cors", [False, True], ids=["no cors", "cors"])
async def test_refusals_are_the_middlewares_byte_for_byte(
    validator: Validator, headers: Headers, store: str | None, status: int, cors: bool
) -> None:
    if store is not None:
        validator = Validator.from_url(store, timeout=0.2, connect_timeout=0.2)
    try:
        dependency = await send(build(TokenAccess(validator, cors=cors)), headers)
        middleware = await send(TokenAccessMiddleware(Recorder(), validator=validator, cors=cors), headers)
    finally:
        if store is not None:
            await validator.close()
    assert dependency.status_code == middleware.status_code == status
    assert dependency.content == middleware.content
    assert shape(dependency.headers) == shape(middleware.headers)
    assert json.loads(dependency.content) != {"detail": json.loads(dependency.content).get("error")}


async def test_the_exact_bodies_and_headers(validator: Validator) -> None:
    app = build(TokenAccess(validator))
    missing = await send(app)
    denied = await send(app, [key("d")])
    assert (missing.status_code, missing.content) == (401, UNAUTHORIZED_BODY)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (denied.status_code, denied.content) == (403, FORBIDDEN_BODY)
    assert "www-authenticate" not in denied.headers
    for reply in (missing, denied):
        assert reply.headers["content-type"] == "application/json"
        assert reply.headers["content-length"] == str(len(reply.content))
    async with Validator.from_url(DOWN, timeout=0.2, connect_timeout=0.2) as down:
        unavailable = await send(build(TokenAccess(down)), [key("open")])
    assert (unavailable.status_code, unavailable.content) == (503, UNAVAILABLE_BODY)


async def test_fail_open_validator_lets_the_route_run() -> None:
    async with Validator.from_url(DOWN, timeout=0.2, connect_timeout=0.2, fail_open=True) as down:
        reply = await send(build(TokenAccess(down)), [key("open")])
    assert reply.status_code == 200
    assert reply.json()["reason"] == Reason.STORE_UNAVAILABLE.value


# --------------------------------------------------------------------------- tokens

# (headers, query, status): every source is read; different values are refused.
ONE_TOKEN = [
    pytest.param([("authorization", "Bearer i")], "", 200, id="bearer"),
    pytest.param([key("i")], "", 200, id="header"),
    pytest.param([], "?api_key=i", 200, id="query"),
    pytest.param([key("i"), ("authorization", "Bearer i")], "?api_key=i", 200, id="the same token thrice"),
    pytest.param([key("i"), ("authorization", "Bearer d")], "", 403, id="decoy bearer beside header"),
    pytest.param([key("i")], "?api_key=d", 403, id="decoy query beside header"),
    pytest.param([], "?api_key=i&api_key=d", 403, id="query twice, two values"),
    pytest.param([key("i"), key("d")], "", 403, id="header twice, two values"),
    pytest.param([], "?api_key=%69", 200, id="percent-encoded query token"),
]


@pytest.mark.parametrize(("headers", "query", "status"), ONE_TOKEN)
async def test_one_token_per_request(validator: Validator, headers: Headers, query: str, status: int) -> None:
    reply = await send(build(TokenAccess(validator)), headers, path="/v1/hello" + query, client=LISTED_IP)
    assert reply.status_code == status
    if status == 200:
        assert reply.json()["token"] == "i"
    else:
        assert reply.content == FORBIDDEN_BODY


async def test_only_the_configured_sources_are_read(validator: Validator) -> None:
    app = build(TokenAccess(validator, token_sources=["header"], token_header="X-Token"))
    assert (await send(app, [("x-token", "i")], client=LISTED_IP)).status_code == 200
    assert (await send(app, [("authorization", "Bearer i")], client=LISTED_IP)).status_code == 401
    assert (await send(app, [key("i")], client=LISTED_IP)).status_code == 401


async def test_the_token_stays_out_of_the_repr() -> None:
    access = Access(None, "tok_secret_123")
    assert "tok_secret_123" not in repr(access)
    assert "tok_secret_123" not in str(access)


# --------------------------------------------------------------------------- public routes and no token


async def test_routes_without_the_dependency_are_public(validator: Validator) -> None:
    app = build(TokenAccess(validator))
    for headers in ([], [key("d")], [key("a"), key("b")]):
        reply = await send(app, headers, path="/public")
        assert (reply.status_code, reply.json()) == (200, {"public": "yes"})


async def test_no_token_reaches_the_route_when_not_required(validator: Validator) -> None:
    app = build(TokenAccess(validator, require_token=False))
    reply = await send(app)
    assert (reply.status_code, reply.json()) == (200, {"decision": None, "token": None})
    assert (await send(app, [key("d")])).status_code == 403


async def test_a_preflight_reaching_a_protected_route_is_not_let_through(validator: Validator) -> None:
    headers = [("origin", "https://app.example.com"), ("access-control-request-method", "GET")]
    reply = await send(build(TokenAccess(validator)), headers, method="OPTIONS")
    assert (reply.status_code, reply.content) == (401, UNAUTHORIZED_BODY)


@pytest.mark.promise("P-TOKEN-ANY-METHOD")
async def test_a_preflight_shaped_request_with_a_token_is_checked(validator: Validator) -> None:
    # "d" is for pages on app.example.com only: from evil.test, refused whatever the method.
    headers = [("origin", OTHER_ORIGIN.decode()), ("access-control-request-method", "GET"), key("d")]
    reply = await send(build(TokenAccess(validator)), headers, method="OPTIONS")
    assert (reply.status_code, reply.content) == (403, FORBIDDEN_BODY)


# --------------------------------------------------------------------------- report-only, denials


async def test_report_only_lets_denials_through_and_records_them(validator: Validator) -> None:
    app = build(TokenAccess(validator, report_only=True))
    reply = await send(app, [key("i")], client=OTHER_IP)
    assert reply.status_code == 200
    assert reply.json() | {"token": None} == {
        "allowed": True,
        "reason": Reason.IP_NOT_LISTED.value,
        "source": Source.BACK_END.value,
        "reported": True,
        "token": None,
    }
    assert validator.denial_log is not None
    await validator.denial_log.flush()
    assert len(await validator.store.denials(validator.store.token_hash("i"))) == 1


async def test_denials_are_counted_as_the_middlewares(validator: Validator) -> None:
    app = build(TokenAccess(validator))
    before = validator.stats.decisions
    await send(app, [key("d")])
    after = validator.stats.decisions
    changed = {d: after[d] - before[d] for d in after if after[d] != before[d]}
    assert [(d.allowed, d.reason, n) for d, n in changed.items()] == [(False, Reason.BACK_END_NOT_ALLOWED, 1)]


# --------------------------------------------------------------------------- CORS


@pytest.mark.promise("P-CORS-NEVER-WIDENS")
async def test_cors_headers_on_denied_front_end_responses_only(validator: Validator) -> None:
    app = build(TokenAccess(validator, cors=True))
    allowed = await send(app, [key("d"), ("origin", LISTED_ORIGIN.decode())])
    denied = await send(app, [key("d"), ("origin", OTHER_ORIGIN.decode())])
    assert allowed.status_code == 200
    assert "access-control-allow-origin" not in allowed.headers
    assert "vary" not in allowed.headers
    assert denied.status_code == 403
    assert denied.headers["access-control-allow-origin"] == OTHER_ORIGIN.decode()
    assert denied.headers.get_list("vary") == ["Origin"]


async def test_no_cors_headers_unless_asked(validator: Validator) -> None:
    reply = await send(build(TokenAccess(validator)), [key("d"), ("origin", LISTED_ORIGIN.decode())])
    assert reply.status_code == 200
    assert "access-control-allow-origin" not in reply.headers


# --------------------------------------------------------------------------- OpenAPI

# (settings, the security schemes the OpenAPI document names)
SCHEMES = [
    pytest.param(
        {},
        {
            "TokenBearer": {"type": "http", "scheme": "bearer"},
            "TokenHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "TokenQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
        },
        id="all three",
    ),
    pytest.param(
        {"token_sources": ["bearer"]}, {"TokenBearer": {"type": "http", "scheme": "bearer"}}, id="bearer only"
    ),
    pytest.param(
        {"token_sources": ["header", "query"], "token_header": "X-Token", "token_query": "token"},
        {
            "TokenHeader": {"type": "apiKey", "in": "header", "name": "X-Token"},
            "TokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
        },
        id="custom names",
    ),
]


@pytest.mark.parametrize(("settings", "schemes"), SCHEMES)
async def test_openapi_names_the_token_sources(
    validator: Validator, settings: dict[str, Any], schemes: dict[str, dict[str, str]]
) -> None:
    document = (await send(build(TokenAccess(validator, **settings)), path="/openapi.json")).json()
    found = document["components"]["securitySchemes"]
    assert {name: {k: v for k, v in s.items() if k != "description"} for name, s in found.items()} == schemes
    # Any one of them will do (a list of requirements is an OR), on protected routes only.
    assert document["paths"]["/v1/hello"]["get"]["security"] == [{name: []} for name in schemes]
    assert "security" not in document["paths"]["/public"]["get"]
    # The dependency's own parameters are no query parameters of the route.
    parameters = document["paths"]["/v1/hello"]["get"].get("parameters", [])
    assert [p["name"] for p in parameters] == []


async def test_openapi_false_leaves_the_document_alone_and_still_checks(validator: Validator) -> None:
    app = build(TokenAccess(validator, openapi=False))
    document = (await send(app, path="/openapi.json")).json()
    assert "securitySchemes" not in document.get("components", {})
    assert "security" not in document["paths"]["/v1/hello"]["get"]
    assert (await send(app)).status_code == 401
    assert (await send(app, [key("d")])).status_code == 403
    assert (await send(app, [key("i")], client=LISTED_IP)).status_code == 200


# --------------------------------------------------------------------------- install


async def test_without_install_refusals_keep_their_status_and_one_error_is_logged(
    validator: Validator, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(TokenAccess(validator), install=False)
    with caplog.at_level(logging.ERROR, logger="validator"):
        missing = await send(app)
        denied = await send(app, [key("d")])
        again = await send(app, [key("d")])
        allowed = await send(app, [key("open")])
    assert (missing.status_code, missing.headers["www-authenticate"]) == (401, "Bearer")
    assert (denied.status_code, again.status_code, allowed.status_code) == (403, 403, 200)
    assert denied.json() == {"detail": "Access denied. You don't have permission to access this."}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "access.install(app)" in errors[0]


async def test_install_after_the_app_started_is_refused(validator: Validator) -> None:
    access = TokenAccess(validator)
    app = build(access)
    await send(app, path="/public")
    with pytest.raises(ConfigurationError, match="before the app serves"):
        access.install(app)


BAD_SETTINGS = [
    pytest.param({"token_sources": []}, id="no token source"),
    pytest.param({"token_header": "Origin"}, id="header name taken by a browser signal"),
    pytest.param({"trusted_proxies": "*"}, id="trust everyone"),
    pytest.param({"max_token_length": 0}, id="max_token_length zero"),
]


@pytest.mark.parametrize("settings", BAD_SETTINGS)
def test_bad_settings_refused_at_construction(settings: dict[str, Any]) -> None:
    validator = Validator.from_url("memory://fastapi-settings")
    with pytest.raises(ConfigurationError):
        TokenAccess(validator, **settings)


def test_without_fastapi_the_import_says_what_to_install() -> None:
    code = "import sys; sys.modules['fastapi'] = None; import validator.web.fastapi"
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert ran.returncode == 1
    needs = "ImportError: validator.web.fastapi needs FastAPI: pip install 'token-access-validator[fastapi]'"
    assert needs in ran.stderr


# --------------------------------------------------------------------------- WebSocket


async def websocket(app: Any, headers: Headers, *, extension: bool) -> list[dict[str, Any]]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "client": (LISTED_IP, 1),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if extension else {},
    }
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def keep(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, keep)
    return sent


async def test_websocket_refused_before_accept(validator: Validator) -> None:
    app = build(TokenAccess(validator))
    closed = await websocket(app, [key("d")], extension=False)
    assert [(m["type"], m.get("code")) for m in closed] == [("websocket.close", 1008)]
    answered = await websocket(app, [key("d")], extension=True)
    assert [m["type"] for m in answered] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert answered[0]["status"] == 403
    assert b"".join(m.get("body", b"") for m in answered[1:]) == FORBIDDEN_BODY
    accepted = await websocket(app, [key("open")], extension=False)
    assert [m["type"] for m in accepted][:2] == ["websocket.accept", "websocket.send"]


async def test_a_global_middlewares_result_is_not_taken_for_the_dependencys(validator: Validator) -> None:
    # The global middleware lets `open` through; the route's dependency reads the request again.
    app = build(TokenAccess(validator, token_sources=["query"]))
    app.add_middleware(TokenAccessMiddleware, validator=validator, token_sources=["header"])
    reply = await send(app, [key("open")], path="/v1/hello?api_key=d")
    assert (reply.status_code, reply.content) == (403, FORBIDDEN_BODY)
