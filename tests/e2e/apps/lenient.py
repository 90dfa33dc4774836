"""The Python app behind the proxies in tests/e2e/test_differential.py (`uvicorn
tests.e2e.apps.lenient:app`): a raw ASGI app that reads the token with Starlette's `Request`, as a
Starlette or FastAPI app does, and routes leniently, the way some mainstream router routes:

- `;params` dropped from each segment (Tomcat, Spring: `/v1;x/data` is `/v1/data`);
- percent-decoded after the split, `%2F` included (servers that decode encoded slashes);
- case ignored (Express, ASP.NET Core);
- trailing dots and spaces of a segment dropped (IIS, ASP.NET);
- empty and `.` segments dropped, `..` resolved (most routers, after normalising);
- a trailing slash ignored.

So a spelling that any of them takes for a protected path is a protected path here too. It echoes
the token it read, how it routed, and what the gate said, as JSON, in the X-Upstream-Echo header
(so HEAD shows it too) and the body.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

from starlette.requests import Request

from validator.web.types import Receive, Scope, Send

__all__ = ["app", "route_of"]


def route_of(raw_path: str) -> str | None:
    """The route a lenient router picks for `raw_path` (None: not found)."""
    segments: list[str] = []
    for raw in raw_path.split("/"):
        segment = unquote(raw.split(";", 1)[0]).lower()
        for part in segment.split("/"):  # an encoded slash splits too
            if part == "..":
                if segments:
                    segments.pop()
                continue
            kept = part.rstrip(". ")
            if kept:
                segments.append(kept)
    path = "/" + "/".join(segments)
    if path == "/":
        return "home"
    if path == "/status":
        return "status"
    if path == "/v1/data":
        return "data"
    if path.startswith("/v1/"):
        return "v1"
    return None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    request = Request(scope, receive)
    raw_path = scope.get("raw_path") or scope["path"].encode()
    route = route_of(raw_path.decode("latin-1"))
    bearer = None
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        bearer = credentials.strip()
    query = scope.get("query_string", b"")
    seen = {
        "app": "python",
        "method": request.method,
        "path": raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else ""),
        "route": route,
        "protected": route in ("data", "v1"),
        "tokens": {
            "query": request.query_params.get("api_key"),
            "header": request.headers.get("x-api-key"),
            "bearer": bearer,
        },
        "fingerprint": request.headers.get("x-token-fingerprint"),
        "access": request.headers.get("x-token-access"),
    }
    body = json.dumps(seen).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-upstream-echo", body),
    ]
    await send({"type": "http.response.start", "status": 404 if route is None else 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
