"""The faces for HTTP: the ASGI middleware, proxy-header parsing, responses, log redaction and
the demo (`python -m validator.web.demo`)."""

from __future__ import annotations

from validator.web.middleware import TokenAccessMiddleware

__all__ = ["TokenAccessMiddleware"]
