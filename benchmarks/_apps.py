"""The three servers of the `middleware` benchmark, as uvicorn app factories.

`uvicorn --factory benchmarks._apps:NAME`, NAME one of `none`, `ours`, `base_http`: the demo app
of `validator.web.demo` (GET /v1/hello) on an in-process `memory://` store seeded with the demo's
tokens, served with no middleware, with `TokenAccessMiddleware` exactly as the demo builds it,
or with the same check written by hand as a Starlette `BaseHTTPMiddleware`.
"""

from __future__ import annotations

from typing import Any

from validator import Validator
from validator.web.demo import DemoApp, api
from validator.web.middleware import ASGIApp

__all__ = ["base_http", "none", "ours"]

FORBIDDEN = {"error": "Access denied. You don't have permission to access this."}


def none() -> ASGIApp:
    """The demo API unprotected: the ceiling."""
    return DemoApp(Validator.from_url("memory://bench"), protect=False, seed=True)


def ours() -> ASGIApp:
    """The demo as `python -m validator.web.demo` serves it: `TokenAccessMiddleware` around the API."""
    return DemoApp(Validator.from_url("memory://bench"), seed=True)


def base_http() -> ASGIApp:
    """The same check as a team would write it by hand: a Starlette `BaseHTTPMiddleware` that
    reads the token, Origin, Referer, Sec-Fetch-* and client address from `Request` and awaits
    `Validator.check()` (with the same cache)."""
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    class TokenCheck(BaseHTTPMiddleware):
        def __init__(self, app: Any, validator: Validator) -> None:
            super().__init__(app)
            self.validator = validator

        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            headers = request.headers
            token = headers.get("x-api-key")
            if token is None and headers.get("authorization", "").startswith("Bearer "):
                token = headers["authorization"][7:]
            if not token:
                return JSONResponse({"error": "API token required."}, status_code=401)
            decision = await self.validator.check(
                token,
                origin=headers.get("origin"),
                referer=headers.get("referer"),
                sec_fetch=any(name.startswith("sec-fetch-") for name in headers),
                client_ip=request.client.host if request.client else None,
            )
            if not decision.allowed:
                return JSONResponse(FORBIDDEN, status_code=403)
            return await call_next(request)

    validator = Validator.from_url("memory://bench")
    app = DemoApp(validator, protect=False, seed=True)
    app.api = TokenCheck(api, validator)
    return app
