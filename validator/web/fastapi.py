"""FastAPI: the middleware's check as a dependency of the routes that need it.

    access = TokenAccess(validator)
    app = FastAPI(lifespan=lifespan)
    access.install(app)

    @app.get("/v1/hello")
    async def hello(checked: Annotated[Access, Depends(access)]) -> dict[str, str]: ...

Routes without the dependency are public. The request is read and checked by a private
`TokenAccessMiddleware`, so tokens, proxies, report-only, CORS, the denial log and the answers
(403 body, 401 with `WWW-Authenticate: Bearer`, 503) are exactly the middleware's. In OpenAPI the
dependency shows as the security schemes its token sources imply (HTTP bearer, API key in a
header, API key in the query), so Swagger UI's "Authorize" button works.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Unpack

try:
    from fastapi import Security
    from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException, WebSocketException
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response
except ImportError as missing:  # run in a subprocess by tests/unit/test_fastapi_dependency.py
    raise ImportError(
        "validator.web.fastapi needs FastAPI: pip install 'token-access-validator[fastapi]'"
    ) from missing

from validator.core import Validator
from validator.errors import ConfigurationError
from validator.model import Decision
from validator.options import resolved, split
from validator.web.middleware import TokenAccessMiddleware
from validator.web.options import FastApiOptions, TokenOptions
from validator.web.responses import UNAUTHORIZED
from validator.web.types import Message, Receive, Scope, Send

__all__ = ["Access", "FastApiOptions", "TokenAccess", "TokenAccessError"]

log = logging.getLogger("validator")

# The key of the start message the private middleware's app sends when the request got through.
_REACHED = "validator.reached"


@dataclass(frozen=True, slots=True)
class Access:
    """What the dependency hands the route: the `Decision` and the token that was checked (None
    for both when `require_token=False` and no token came). Authenticate with this token, not
    one read from the request again. Its repr leaves the token out."""

    decision: Decision | None
    token: str | None = field(repr=False)


class TokenAccessError(HTTPException):
    """The middleware's answer to a request it refused (401, 403, 503), raised by the dependency
    and written out byte for byte by the handler `TokenAccess.install` adds. Without that handler
    FastAPI answers it as any HTTPException: the same status and headers, a `{"detail": ...}` body.
    An app's own handler for the status code (`@app.exception_handler(403)`) takes precedence,
    as Starlette gives status handlers the first say on HTTPExceptions."""

    def __init__(self, status_code: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        try:
            message = str(json.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            message = ""
        kept = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name not in (b"content-type", b"content-length")
        }
        super().__init__(status_code, detail=message, headers=kept)
        self.raw_headers = list(headers)
        self.body = body


async def _answer(connection: Request, error: Exception) -> Response:
    """The exception handler: the middleware's reply as it sent it."""
    if not isinstance(error, TokenAccessError):
        raise error
    response = Response(error.body, status_code=error.status_code)
    response.raw_headers = list(error.raw_headers)
    return response


async def _reached(scope: Scope, receive: Receive, send: Send) -> None:
    # The private middleware's app: the request got through. Said through the `send` the
    # middleware hands its app (which adds no header: the app's own CORS policy decides who
    # reads allowed responses, P-CORS-NEVER-WIDENS).
    await send({"type": "http.response.start", "status": 200, "headers": [], _REACHED: True})


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class TokenAccess:
    """A FastAPI dependency that checks the request as `TokenAccessMiddleware` does and gives the
    route an `Access`: `checked: Annotated[Access, Depends(access)]`, or
    `dependencies=[Depends(access)]` on a route or router that does not need the result.

    The settings are the middleware's (README, "Settings"), less what only a global middleware
    can do (`preflight`, `exempt`), plus `openapi`: with False, no security schemes in the
    OpenAPI document, and none of the sub-dependencies FastAPI solves per request for them.
    A CORS preflight that reaches a protected route is checked
    like any request, so without a token it gets 401 (answer preflights before routing:
    Starlette's CORSMiddleware, or the global middleware). Call `install(app)` once, before the
    app serves, so refusals get the middleware's exact bodies. With `cors=True`, the refusals
    get `Access-Control-Allow-Origin` and `Vary`; allowed responses are the app's, CORS included
    (docs/behaviour.md, P-CORS-NEVER-WIDENS).

    The validator starts itself at the first check; close it in the app's lifespan
    (`async with validator: yield`).
    """

    __signature__: inspect.Signature

    def __init__(self, validator: Validator, **options: Unpack[FastApiOptions]) -> None:
        """`options`: `FastApiOptions` (validator/web/options.py, which says each one's default).
        Raises `ConfigurationError` for an unknown or bad one."""
        o = resolved(FastApiOptions, options, owner="TokenAccess")
        checked, _ = split(o, TokenOptions)
        # The middleware checks every setting and raises ConfigurationError for a bad one.
        self._middleware = TokenAccessMiddleware(_reached, validator=validator, **checked)
        self.validator = validator
        self.require_token = o["require_token"]
        token_header, token_query = o["token_header"], o["token_query"]
        self._unhandled_logged = False
        # FastAPI reads a dependency's parameters from its signature: the security schemes are
        # sub-dependencies that never refuse (auto_error=False) and whose values are not used;
        # they are there so that OpenAPI, and Swagger UI's "Authorize", know where the token goes.
        schemes: dict[str, Any] = {
            "bearer": (
                HTTPBearer(
                    auto_error=False,
                    scheme_name="TokenBearer",
                    description="The API token: `Authorization: Bearer <token>`",
                ),
                HTTPAuthorizationCredentials | None,
            ),
            "header": (
                APIKeyHeader(
                    name=token_header,
                    auto_error=False,
                    scheme_name="TokenHeader",
                    description=f"The API token in the `{token_header}` header",
                ),
                str | None,
            ),
            "query": (
                APIKeyQuery(
                    name=token_query,
                    auto_error=False,
                    scheme_name="TokenQuery",
                    description=f"The API token in the `{token_query}` query parameter",
                ),
                str | None,
            ),
        }
        keyword = inspect.Parameter.KEYWORD_ONLY
        positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
        self.__signature__ = inspect.Signature(
            [
                inspect.Parameter("connection", positional, annotation=HTTPConnection),
                inspect.Parameter("response", positional, annotation=Response),
                *(
                    inspect.Parameter(
                        f"scheme_{source}",
                        keyword,
                        default=Security(schemes[source][0]),
                        annotation=schemes[source][1],
                    )
                    for source in (self._middleware.token_sources if o["openapi"] else ())
                ),
            ],
            return_annotation=Access,
        )

    def install(self, app: Starlette) -> None:
        """Add the handler that answers refusals with the middleware's exact responses.

        Call it before the app serves: Starlette fixes its handlers at the first request or
        at lifespan start-up."""
        if app.middleware_stack is not None:
            raise ConfigurationError(
                "TokenAccess.install(app) must run before the app serves: call it where the app is built"
            )
        app.add_exception_handler(TokenAccessError, _answer)

    async def __call__(self, connection: HTTPConnection, response: Response, **schemes: object) -> Access:
        scope = connection.scope
        state = scope.get("state")
        if state:
            # A global middleware's result must not pass for this check's.
            state.pop("token_access", None)
            state.pop("api_token", None)
        sent: list[Message] = []

        async def keep(message: Message) -> None:
            sent.append(message)

        await self._middleware(scope, _no_body, keep)
        if sent and sent[0].get(_REACHED):
            state = scope.get("state", {})
            if "token_access" not in state:
                # A CORS preflight, which the middleware passes on unchecked: not here.
                if self.require_token:
                    self._refuse(connection, UNAUTHORIZED.status, UNAUTHORIZED.headers, UNAUTHORIZED.body)
                return Access(None, None)
            response.raw_headers.extend(sent[0]["headers"])
            return Access(state["token_access"], state["api_token"])
        if not sent:
            # The middleware neither replied nor called its app: nothing says "allowed".
            self._refuse(connection, UNAUTHORIZED.status, UNAUTHORIZED.headers, UNAUTHORIZED.body)
        start = sent[0]
        if start["type"] == "websocket.close":
            raise WebSocketException(code=start.get("code", 1008))
        body = b"".join(m.get("body", b"") for m in sent[1:])
        self._refuse(connection, start["status"], start.get("headers", ()), body)

    def _refuse(
        self, connection: HTTPConnection, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> NoReturn:
        handlers = getattr(connection.scope.get("app"), "exception_handlers", None)
        if (handlers is None or TokenAccessError not in handlers) and not self._unhandled_logged:
            self._unhandled_logged = True
            log.error(
                "TokenAccess: call access.install(app) where the app is built; until then refusals "
                'keep their status but get FastAPI\'s {"detail": ...} body'
            )
        raise TokenAccessError(status, headers, body)
