"""The middleware's answers: the fixed 403, 401 and 503 bodies of docs/behaviour.md, and CORS on them;
the `/metrics` text the gate and the demo serve."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from validator.web.types import Message, Send

if TYPE_CHECKING:
    from validator.core import Validator


class Reply:
    """A fixed JSON error response, serialised once at import."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, message: str, *extra: tuple[bytes, bytes]) -> None:
        self.status = status
        # json.dumps' default separators give docs/behaviour.md's exact bytes: {"error": "..."}.
        self.body = json.dumps({"error": message}).encode()
        self.headers = (
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            *extra,
        )


FORBIDDEN = Reply(403, "Access denied. You don't have permission to access this.")
UNAUTHORIZED = Reply(401, "API token required.", (b"www-authenticate", b"Bearer"))
UNAVAILABLE = Reply(503, "Access check unavailable. Try again later.")
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def metrics_renderer(validator: Validator) -> Callable[[], bytes] | None:
    """Prometheus text of the validator's metrics, if prometheus-client is installed."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest

        from validator.metrics import install
    except ImportError:
        return None
    registry = CollectorRegistry()
    install(validator, registry)
    return lambda: generate_latest(registry)


def with_cors(send: Send, origin: bytes) -> Send:
    """`send`, with the response start carrying `Access-Control-Allow-Origin: origin` and
    `Origin` in `Vary` (replacing an allow-origin set before): an app's own CORS policy, as the
    demo's API uses it. Never put around an app by the middleware (P-CORS-NEVER-WIDENS)."""

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[tuple[bytes, bytes]] = []
            vary: list[bytes] = []
            for name, value in message.get("headers", ()):
                lower = name.lower()
                if lower == b"vary":
                    vary.append(value)
                elif lower != b"access-control-allow-origin":
                    headers.append((name, value))
            varies = b", ".join(vary)
            if not {v.strip().lower() for v in varies.split(b",")} & {b"origin", b"*"}:
                varies = varies + b", Origin" if varies else b"Origin"
            headers.append((b"vary", varies))
            headers.append((b"access-control-allow-origin", origin))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_cors
