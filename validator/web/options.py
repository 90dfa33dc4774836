"""The HTTP options, defined once: `TokenAccessMiddleware`, `TokenAccess` (FastAPI) and the gate
(`Gate`, `build_gate`, `validator-gate`, whose flags are made from these fields) take them from here.

Each field says its type, default and help. Where a field is defined says which faces take it:
`CheckOptions`, every face; `TokenOptions`, the middleware and the FastAPI dependency (the gate
always wants a token, and names the client with its own `client_header`); `MiddlewareOptions`,
what only a global middleware can do (answer preflights, exempt paths); `FastApiOptions`, the
OpenAPI schemes; `GateOptions`, the proxy in front. `HttpOptions` is all of them.
"""

# Not `from __future__ import annotations`: Python 3.11's TypedDict sees `Required` only in
# evaluated annotations, and `validator-gate`'s parser reads these at run time.

import typing
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal, Required, TypedDict

from validator.options import Option

__all__ = [
    "TOKEN_SOURCES",
    "CheckOptions",
    "FastApiOptions",
    "GateOptions",
    "HttpOptions",
    "MiddlewareOptions",
    "Proxy",
    "ProxyHeader",
    "TokenOptions",
    "TokenSource",
]

TokenSource = Literal["bearer", "header", "query"]
TOKEN_SOURCES: tuple[TokenSource, ...] = ("bearer", "header", "query")
# The client-address headers proxies and CDNs send (any other header name is accepted too).
ProxyHeader = Literal[
    "x-forwarded-for", "forwarded", "x-real-ip", "cf-connecting-ip", "true-client-ip", "fly-client-ip"
]
# The proxies the gate answers (validator/web/gate.py: what each sends).
Proxy = Literal["nginx", "traefik", "caddy", "envoy"]


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list on a command line."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


class CheckOptions(TypedDict, total=False):
    """What every face takes: the token, the client address, report-only, CORS on refusals."""

    token_sources: Annotated[
        Sequence[TokenSource],
        Option(
            TOKEN_SOURCES,
            "where to look for the token: bearer (Authorization: Bearer), header (token_header), "
            "query (token_query); two that carry different tokens are refused (403)",
            metavar="SOURCE[,SOURCE...]",
            parse=_names,
        ),
    ]
    token_header: Annotated[str, Option("X-API-Key", "the header that carries the token", metavar="NAME")]
    token_query: Annotated[
        str, Option("api_key", "the query parameter that carries the token", metavar="NAME")
    ]
    max_token_length: Annotated[
        int | None,
        Option(
            None,
            "a longer token is refused (403) without a look-up (default: the validator's max_token_length)",
            metavar="N",
        ),
    ]
    trusted_proxies: Annotated[
        Iterable[str] | str,
        Option(
            (),
            "addresses or CIDR networks of the proxies whose client header is believed, as a list or "
            "comma-separated (the gate: required, those the proxy calls it from)",
            metavar="CIDR[,CIDR...]",
            env="VALIDATOR_GATE_TRUSTED_PROXIES",
        ),
    ]
    report_only: Annotated[bool, Option(False, "let would-be denials through, logged and counted")]
    cors: Annotated[
        bool,
        Option(
            False,
            "echo the Origin in Access-Control-Allow-Origin (and Vary: Origin) on refusals, so page "
            "script can read them; allowed responses stay the app's",
        ),
    ]


class TokenOptions(CheckOptions, total=False):
    """The middleware's and the FastAPI dependency's: a request without a token, the proxy header."""

    require_token: Annotated[
        bool,
        Option(True, "without a token, answer 401; if false, pass the request on with no decision"),
    ]
    proxy_header: Annotated[
        ProxyHeader | str,
        Option(
            "x-forwarded-for",
            "the header in which a trusted proxy names the client: a chain (x-forwarded-for, "
            "forwarded) walked right to left, or one address (x-real-ip, cf-connecting-ip, ...)",
            metavar="NAME",
        ),
    ]


class MiddlewareOptions(TokenOptions, total=False):
    """The global middleware's: preflights and exempt paths."""

    preflight: Annotated[
        Literal["pass", "answer"],
        Option("pass", "a CORS preflight (no token): pass it to the app, or answer it here"),
    ]
    cors_allow_methods: Annotated[
        Sequence[str],
        Option(
            ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"),
            "Access-Control-Allow-Methods of an answered preflight",
        ),
    ]
    cors_allow_headers: Annotated[
        Sequence[str] | None,
        Option(
            None,
            "Access-Control-Allow-Headers of an answered preflight "
            "(default: Authorization, the token header, Content-Type)",
        ),
    ]
    cors_max_age: Annotated[int, Option(600, "Access-Control-Max-Age of an answered preflight")]
    exempt: Annotated[
        Iterable[str] | str,
        Option(
            (), "exact paths that need no token, when Starlette routes them to a route without parameters"
        ),
    ]


class FastApiOptions(TokenOptions, total=False):
    """The FastAPI dependency's: its OpenAPI security schemes."""

    openapi: Annotated[
        bool, Option(True, "show the token sources as security schemes in the OpenAPI document")
    ]


class GateOptions(CheckOptions, total=False):
    """The gate's: the proxy in front, and the header it names the client in."""

    # `| str`: a caller's plain string still type-checks (the gate refuses an unknown one).
    proxy: Annotated[
        Required[Proxy | str], Option(None, "the proxy that calls the gate", choices=typing.get_args(Proxy))
    ]
    client_header: Annotated[
        str | None,
        Option(
            None,
            "the header naming the client (default: nginx x-real-ip, the others x-forwarded-for)",
            metavar="NAME",
        ),
    ]


class HttpOptions(MiddlewareOptions, FastApiOptions, GateOptions, total=False):
    """Every HTTP option, whichever faces take it."""
