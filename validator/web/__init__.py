"""The faces for HTTP: the ASGI middleware (and `public`, its route marker), proxy-header parsing,
responses, log redaction, the FastAPI dependency (`validator.web.fastapi`, an extra) and the demo
(`python -m validator.web.demo`)."""

from __future__ import annotations

from validator.web.exemption import public
from validator.web.middleware import TokenAccessMiddleware

__all__ = ["TokenAccessMiddleware", "public"]
