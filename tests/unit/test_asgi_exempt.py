"""TokenAccessMiddleware's exemptions (a path list, the `@public` marker), tried as an attacker would.

Every request here comes without a token: an exempt route answers 200, anything else gets the
401 and its endpoint never runs. Requests are raw ASGI calls, so the path is exactly what a
server could hand over (`//healthz`, `/healthz/..`, a root_path).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from validator import Validator
from validator.errors import ConfigurationError
from validator.web.exemption import public
from validator.web.middleware import TokenAccessMiddleware
from validator.web.types import Message, Receive, Scope, Send

pytestmark = [pytest.mark.timeout(30), pytest.mark.promise("P-EXEMPT-ROUTES")]

EXEMPT = ["/healthz", "/docs", "/sub/healthz", "/t1/healthz", "/files/readme", "/api/healthz"]


class Ran:
    """Which endpoints ran, by name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def endpoint(self, name: str) -> Any:
        async def run(request: Request) -> PlainTextResponse:
            self.names.append(name)
            return PlainTextResponse(name)

        run.__name__ = name
        return run

    def asgi(self, name: str) -> Any:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            self.names.append(name)
            await PlainTextResponse(name)(scope, receive, send)

        return app


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    async with Validator.from_url(f"memory://exempt-{uuid.uuid4()}") as validator:
        yield validator


def starlette_app(ran: Ran) -> Starlette:
    return Starlette(
        routes=[
            Route("/healthz", ran.endpoint("health")),
            Route("/ping", public(ran.endpoint("ping"))),
            Route("/ping", ran.endpoint("reset"), methods=["POST"]),
            Route("/items/{id}", public(ran.endpoint("item"))),
            Mount(
                "/sub",
                routes=[Route("/healthz", ran.endpoint("sub-health")), Route("/{x}", ran.endpoint("sub"))],
            ),
            Mount("/files", app=ran.asgi("files")),
            Mount("/{tenant}", routes=[Route("/healthz", ran.endpoint("tenant-health"))]),
            Route("/{name}", ran.endpoint("protected"), methods=["GET", "POST"]),
        ]
    )


async def call(app: Any, path: str, *, method: str = "GET", root_path: str = "") -> tuple[int, bytes]:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": [(b"host", b"api.test")],
        "client": ("198.51.100.9", 1),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def keep(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, keep)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


# (method, scope path, root_path, status, the endpoint that ran)
HOSTILE = [
    pytest.param("GET", "/healthz", "", 200, "health", id="listed path"),
    pytest.param("HEAD", "/healthz", "", 200, "health", id="listed path, HEAD"),
    pytest.param("POST", "/healthz", "", 401, None, id="listed path, a method routed to /{name}"),
    pytest.param("GET", "/healthz/", "", 401, None, id="trailing slash"),
    pytest.param("GET", "//healthz", "", 401, None, id="double slash"),
    pytest.param("GET", "/healthz/..", "", 401, None, id="dot segment (/healthz%2F.. decoded)"),
    pytest.param("GET", "/healthz%2F..", "", 401, None, id="encoded slash left encoded"),
    pytest.param("GET", "/HEALTHZ", "", 401, None, id="upper case"),
    pytest.param("GET", "/healthz\x00", "", 401, None, id="NUL after the path"),
    pytest.param("GET", "/docs", "", 401, None, id="listed, but only /{name} serves it"),
    pytest.param("GET", "/sub/healthz", "", 200, "sub-health", id="listed, inside a mount"),
    pytest.param("GET", "/sub/other", "", 401, None, id="not listed, inside a mount"),
    pytest.param("GET", "/t1/healthz", "", 401, None, id="listed, but through a mount with parameters"),
    pytest.param("GET", "/files/readme", "", 200, "files", id="listed, a mounted app without routes"),
    pytest.param("GET", "/files/secret", "", 401, None, id="not listed, the same mounted app"),
    pytest.param("GET", "/ping", "", 200, "ping", id="marked public"),
    pytest.param("POST", "/ping", "", 401, None, id="marked path, another method's unmarked route"),
    pytest.param("GET", "/items/1", "", 401, None, id="marked, but with path parameters"),
    pytest.param("GET", "/api/healthz", "/api", 200, "health", id="root_path: the full path listed"),
    pytest.param("GET", "/api/ping", "/api", 401, None, id="root_path: a marked route's path lacks it"),
    pytest.param("GET", "/healthz", "/api", 200, "health", id="root_path not in front: routed as the path"),
]


@pytest.mark.parametrize(("method", "path", "root_path", "status", "endpoint"), HOSTILE)
@pytest.mark.parametrize("form", ["wrapped", "add_middleware"])
async def test_hostile_paths(
    validator: Validator, form: str, method: str, path: str, root_path: str, status: int, endpoint: str | None
) -> None:
    ran = Ran()
    app: Any = starlette_app(ran)
    if form == "wrapped":
        app = TokenAccessMiddleware(app, validator=validator, exempt=EXEMPT)
    else:
        app.add_middleware(TokenAccessMiddleware, validator=validator, exempt=EXEMPT)
    got, _ = await call(app, path, method=method, root_path=root_path)
    assert got == status
    assert ran.names == ([endpoint] if endpoint else [])


async def test_a_catch_all_before_the_listed_route_wins_and_is_checked(validator: Validator) -> None:
    ran = Ran()
    routes = [Route("/{name}", ran.endpoint("protected")), Route("/healthz", ran.endpoint("health"))]
    app = TokenAccessMiddleware(Starlette(routes=routes), validator=validator, exempt=["/healthz"])
    assert await call(app, "/healthz") == (401, b'{"error": "API token required."}')
    assert ran.names == []


def fastapi_app(ran: Ran) -> FastAPI:
    app = FastAPI()
    router = APIRouter()

    @router.get("/included")
    @public
    async def included() -> str:
        ran.names.append("included")
        return "included"

    @app.post("/{name}")
    async def protected(name: str) -> str:
        ran.names.append("protected")
        return name

    @app.get("/healthz")
    async def healthz() -> str:
        ran.names.append("health")
        return "ok"

    @public
    @app.get("/ping")
    async def ping() -> str:
        ran.names.append("ping")
        return "pong"

    app.include_router(router)
    return app


# (method, path, status, endpoint): FastAPI routes, its docs, an included router.
FASTAPI_CASES = [
    pytest.param("GET", "/healthz", 200, "health", id="listed"),
    pytest.param("POST", "/healthz", 401, None, id="listed, POST falls through to /{name}"),
    pytest.param("GET", "/docs", 200, None, id="docs"),
    pytest.param("GET", "/openapi.json", 200, None, id="openapi.json"),
    pytest.param("POST", "/openapi.json", 401, None, id="openapi.json, POST falls through to /{name}"),
    pytest.param("GET", "/ping", 200, "ping", id="marked above the route decorator"),
    pytest.param("GET", "/included", 401, None, id="marked, in an included router: protected"),
]


@pytest.mark.parametrize(("method", "path", "status", "endpoint"), FASTAPI_CASES)
async def test_fastapi_routes(
    validator: Validator, method: str, path: str, status: int, endpoint: str | None
) -> None:
    ran = Ran()
    app = fastapi_app(ran)
    app.add_middleware(
        TokenAccessMiddleware, validator=validator, exempt=["/healthz", "/docs", "/openapi.json"]
    )
    got, _ = await call(app, path, method=method)
    assert got == status
    assert ran.names == ([endpoint] if endpoint else [])


async def test_a_refused_exemption_is_logged_once(
    validator: Validator, caplog: pytest.LogCaptureFixture
) -> None:
    app = TokenAccessMiddleware(starlette_app(Ran()), validator=validator, exempt=["/docs"])
    with caplog.at_level(logging.WARNING, logger="validator"):
        for _ in range(3):
            assert (await call(app, "/docs"))[0] == 401
    warnings = [r.getMessage() for r in caplog.records if "exempt path" in r.getMessage()]
    assert warnings == [
        "exempt path '/docs' is checked as usual: it is not routed to one route without path parameters"
    ]


async def test_without_routes_nothing_is_exempt(validator: Validator) -> None:
    ran = Ran()
    app = TokenAccessMiddleware(ran.asgi("plain"), validator=validator, exempt=["/healthz"])
    assert (await call(app, "/healthz"))[0] == 401
    assert ran.names == []


async def test_routes_added_after_the_middleware_are_found_at_startup(validator: Validator) -> None:
    ran = Ran()
    inner = Starlette()
    app = TokenAccessMiddleware(inner, validator=validator)
    inner.add_route("/late", public(ran.endpoint("late")))
    assert (await call(app, "/late"))[0] == 401
    messages: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def keep(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, keep)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert (await call(app, "/late"))[0] == 200
    assert ran.names == ["late"]


BAD_EXEMPT = [
    pytest.param(["healthz"], id="relative"),
    pytest.param(["/docs*"], id="wildcard"),
    pytest.param(["/items/{id}"], id="parameter"),
    pytest.param(["/healthz?x=1"], id="query"),
    pytest.param([""], id="empty"),
    pytest.param([None], id="not a string"),
]


@pytest.mark.parametrize("exempt", BAD_EXEMPT)
def test_bad_exempt_paths_refused_at_construction(exempt: list[Any]) -> None:
    validator = Validator.from_url("memory://exempt-settings")
    with pytest.raises(ConfigurationError, match="exact path"):
        TokenAccessMiddleware(Starlette(), validator=validator, exempt=exempt)


def test_one_string_is_one_path() -> None:
    validator = Validator.from_url("memory://exempt-settings")
    middleware = TokenAccessMiddleware(Starlette(), validator=validator, exempt="/healthz")
    assert middleware._exempt_paths == frozenset({"/healthz"})


def inside_a_mount(ran: Ran, validator: Validator) -> Any:
    inner = Starlette(
        routes=[Route("/healthz", ran.endpoint("health")), Route("/{x}", ran.endpoint("inner"))]
    )
    protected = TokenAccessMiddleware(inner, validator=validator, exempt=["/inner/healthz"])
    return Starlette(routes=[Mount("/inner", app=protected)])


def behind_another_middleware(ran: Ran, validator: Validator) -> Any:
    from starlette.middleware.cors import CORSMiddleware

    app = Starlette(routes=[Route("/healthz", ran.endpoint("health"))])
    return TokenAccessMiddleware(CORSMiddleware(app), validator=validator, exempt=["/healthz"])


def under_a_host_route(ran: Ran, validator: Validator) -> Any:
    from starlette.routing import Host

    app = Starlette(
        routes=[Host("api.test", app=Starlette(routes=[Route("/healthz", ran.endpoint("health"))]))]
    )
    return TokenAccessMiddleware(app, validator=validator, exempt=["/healthz"])


# (how the app is stacked, path, status, the endpoint that ran)
STACKS = [
    pytest.param(inside_a_mount, "/inner/healthz", 200, "health", id="middleware inside a mount: full path"),
    pytest.param(inside_a_mount, "/inner/other", 401, None, id="middleware inside a mount: not listed"),
    pytest.param(
        behind_another_middleware, "/healthz", 200, "health", id="routes found through a middleware"
    ),
    pytest.param(under_a_host_route, "/healthz", 401, None, id="a Host route: not followed, checked"),
]


@pytest.mark.parametrize(("stack", "path", "status", "endpoint"), STACKS)
async def test_stacks(validator: Validator, stack: Any, path: str, status: int, endpoint: str | None) -> None:
    ran = Ran()
    app = stack(ran, validator)
    got, _ = await call(app, path)  # the outer Starlette's Mount sets the inner root_path
    assert got == status
    assert ran.names == ([endpoint] if endpoint else [])
