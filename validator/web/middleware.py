"""The ASGI middleware: every request's token checked against where the request comes from.

    app = TokenAccessMiddleware(app, validator=Validator.from_url(url, secret=...))

The token comes from `Authorization: Bearer ...`, an `X-API-Key` header or an `api_key` query
parameter (every one present must carry the same token); the source signals from `Origin`,
`Referer` and `Sec-Fetch-*`; the client address from the connection, or from `X-Forwarded-For` /
`Forwarded` when (and only when) the connection comes from a configured trusted proxy. Denied
requests get docs/behaviour.md's 403 body.

Run uvicorn with `--no-proxy-headers` when `trusted_proxies` is set here, or leave
`trusted_proxies` empty and let uvicorn's `--proxy-headers --forwarded-allow-ips` rewrite the
client address: never both, or the forwarded chain is walked twice (see README, "ASGI middleware").
"""

from __future__ import annotations

import enum
import logging
import re
import time
from typing import Final, Literal, Unpack

from validator.core import Validator
from validator.denials import Denied
from validator.errors import ConfigurationError, StoreUnavailable
from validator.model import DEFAULT_MAX_TOKEN_LENGTH, MAX_TOKEN_LENGTH, Decision, Reason
from validator.options import resolved
from validator.store import fingerprint
from validator.store.denial_refs import AMBIGUOUS, MALFORMED_TOKEN, UNLOGGED, UNREADABLE
from validator.web.exemption import Exemption
from validator.web.options import TOKEN_SOURCES, MiddlewareOptions, ProxyHeader, TokenSource
from validator.web.proxy_headers import (
    HTTP_TOKEN,
    TrustedHosts,
    forwarded_hops,
    one_address,
    x_forwarded_for_hops,
)
from validator.web.responses import FORBIDDEN, UNAUTHORIZED, UNAVAILABLE, Reply
from validator.web.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_MAX_TOKEN_LENGTH",
    "ASGIApp",
    "Message",
    "MiddlewareOptions",
    "ProxyHeader",
    "Receive",
    "Scope",
    "Send",
    "TokenAccessMiddleware",
    "TokenSource",
]

log = logging.getLogger("validator")


# What may stand between `Bearer` and the token for an app that reads it with a regex's `\s`.
_BEARER_SPACE = (b" ", b"\t", b"\x0b", b"\x0c")


# Header kinds the one pass over the request headers looks for. `_OTHER`: a common header that is
# none of ours; `_SEC_FETCH_HEADER`: a Sec-Fetch-* header browsers send.
_OTHER, _TOKEN_HEADER, _AUTHORIZATION, _ORIGIN, _REFERER, _SEC_FETCH_HEADER, _PROXY, _PREFLIGHT = range(8)
_SEC_FETCH = b"sec-fetch-"
# Names the header loop finds in its dict, so that it tests only rarer names for the Sec-Fetch-*
# prefix (`bytes.startswith` costs as much as the dict look-up itself: ~55 ns per header here).
# A name missing from here is still read right: it merely pays for the prefix test.
_COMMON_HEADERS = (
    b"host", b"user-agent", b"accept", b"accept-encoding", b"accept-language", b"connection",
    b"content-type", b"content-length", b"cookie", b"cache-control", b"pragma", b"priority",
    b"if-none-match", b"if-modified-since", b"upgrade-insecure-requests", b"dnt", b"te",
    b"upgrade", b"x-request-id", b"x-real-ip", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded", b"authorization", b"via", b"sec-ch-ua", b"sec-ch-ua-mobile",
    b"sec-ch-ua-platform", b"sec-websocket-key", b"sec-websocket-version",
    b"sec-websocket-extensions", b"sec-websocket-protocol",
)  # fmt: skip
_SEC_FETCH_HEADERS = (b"sec-fetch-site", b"sec-fetch-mode", b"sec-fetch-dest", b"sec-fetch-user")
# Only an Origin made of visible ASCII is echoed back in Access-Control-Allow-Origin.
_ECHOABLE = re.compile(rb"[!-~]+")
_EXPOSE_REF: Final = (b"access-control-expose-headers", b"Access-Denied-Ref")
_MALFORMED_TOKEN_REASON: Final = Reason.MALFORMED_TOKEN  # a module name: no enum look-up per 403


class _Verdict(enum.Enum):
    """What `_read` says in place of a token when the request is decided before any check."""

    MALFORMED = "ambiguous or oversized origin, referer or token"
    PREFLIGHT = "a CORS preflight"


# Module constants, compared with `is`: cheaper than the enum's attribute look-up per request.
_MALFORMED: Final = _Verdict.MALFORMED
_PREFLIGHT_REQUEST: Final = _Verdict.PREFLIGHT

# What `_read` returns: the token (or a verdict), the stripped Origin bytes (echoed by CORS), the
# Origin and Referer as text, whether a Sec-Fetch-* header came, and the client address.
# A tuple of locals, not an object: building and reading a 12-slot request object, with the calls
# to classify() and a `_client_ip` method, cost ~340 ns of the ~2.3 us the middleware added per
# request (benchmarks: middleware, in process).
_Read = tuple[str | _Verdict | None, bytes | None, str | None, str | None, bool, str | None]


class TokenAccessMiddleware:
    """Checks the API token of every HTTP request and WebSocket handshake (docs/behaviour.md).

    - `token_sources`: where to look for the token: `"bearer"` (`Authorization: Bearer ...`),
      `"header"` (`token_header`), `"query"` (`token_query`). Every one of them is read; when
      two carry different tokens (a decoy beside a stolen token), the request is refused (403).
    - `require_token`: without a token, answer 401; if False, pass the request to the app
      (for public routes) with `scope["state"]["token_access"] = None`.
    - `max_token_length`: a longer token is refused (403) without a look-up (default: the
      validator's `max_token_length`). So is a token with a byte outside `!`..`~` (docs/behaviour.md).
    - `trusted_proxies`: addresses or CIDR networks of proxies whose `proxy_header` names the
      client. None by default. `proxy_header`: a chain, `"x-forwarded-for"` (default) or
      `"forwarded"` (RFC 7239), walked right to left past the trusted proxies; or a header in
      which the trusted edge puts the one address it saw: `"x-real-ip"` (nginx),
      `"cf-connecting-ip"`, `"true-client-ip"`, `"fly-client-ip"` or any other name. Only that
      header is read; for a single-address header, a value that is not exactly one address (two,
      a port, a repeat of the header, garbage) means the client is unknown (no IP).
    - `preflight`: a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`
      and no token in any source) carries no token: `"pass"` it to the app, or `"answer"` it
      here with `cors_allow_methods`, `cors_allow_headers` (default: `Authorization`, the
      token header, `Content-Type`) and `cors_max_age`. A request of that shape that carries a
      token is no preflight: it is checked like any other.
    - `cors`: the middleware's own refusals (401, 403, 503) to a request with an `Origin` get
      `Access-Control-Allow-Origin: <that origin>` and `Vary: Origin`, so page script can read
      them. Responses the app sends are left as the app made them: its own CORS policy decides
      who reads them (docs/behaviour.md, P-CORS-NEVER-WIDENS).
    - `report_only`: a rollout switch for every token: a request the rules deny is let through
      (`decision.reported`), and logged and counted as a would-be denial.
    - `exempt`: exact paths (`scope["path"]`, so with a root_path, the path with it) that need no
      token, e.g. `["/healthz", "/docs", "/openapi.json"]`; endpoints marked `@public` are added.
      A listed path is exempt only when Starlette routes it to a route without path parameters
      (validator/web/exemption.py); otherwise it is checked as usual.

    Repeated or conflicting `Origin`, `Referer` or token values are refused with 403. The
    decision goes to `scope["state"]["token_access"]` and the token checked to
    `scope["state"]["api_token"]` (Starlette: `request.state.api_token`): the app should
    authenticate with that token, not parse the request again.
    The store being unreachable with nothing cached answers 503; build the validator with
    `fail_open=True` to allow instead.
    """

    def __init__(self, app: ASGIApp, *, validator: Validator, **options: Unpack[MiddlewareOptions]) -> None:
        """`options`: `MiddlewareOptions` (validator/web/options.py, which says each one's default).
        Raises `ConfigurationError` for an unknown or bad one."""
        o = resolved(MiddlewareOptions, options, owner="TokenAccessMiddleware")
        token_header, token_query = o["token_header"], o["token_query"]
        proxy_header, max_token_length = o["proxy_header"], o["max_token_length"]
        cors_allow_methods, cors_allow_headers = o["cors_allow_methods"], o["cors_allow_headers"]
        sources = tuple(o["token_sources"])
        if not sources or len(set(sources)) != len(sources) or not set(sources) <= set(TOKEN_SOURCES):
            raise ConfigurationError(
                f"token_sources must name each of {', '.join(TOKEN_SOURCES)} at most once, "
                f"not {o['token_sources']!r}"
            )
        if not token_query:
            raise ConfigurationError("token_query must not be empty")
        if cors_allow_headers is None:
            cors_allow_headers = ("Authorization", token_header, "Content-Type")
        for name in (token_header, *cors_allow_methods, *cors_allow_headers):
            if not HTTP_TOKEN.fullmatch(name):
                raise ConfigurationError(f"{name!r} is not an HTTP header or method name")
        reserved = ("origin", "referer", "authorization", "x-forwarded-for", "forwarded")
        if token_header.lower() in reserved or token_header.lower().startswith(
            ("sec-fetch-", "access-control-")
        ):
            raise ConfigurationError(f"token_header {token_header!r} already has a meaning here")
        if max_token_length is None:
            max_token_length = validator.max_token_length
        if not 1 <= max_token_length <= MAX_TOKEN_LENGTH:
            raise ConfigurationError(f"max_token_length must be between 1 and {MAX_TOKEN_LENGTH}")
        proxy_header = proxy_header.lower()
        taken = ("origin", "referer", "authorization", token_header.lower())
        if (
            not HTTP_TOKEN.fullmatch(proxy_header)
            or proxy_header in taken
            or proxy_header.startswith(("sec-fetch-", "access-control-"))
        ):
            raise ConfigurationError(
                f"proxy_header {proxy_header!r} cannot name the client: use x-forwarded-for, "
                "forwarded, x-real-ip, cf-connecting-ip, true-client-ip, fly-client-ip or a header "
                "name of your edge's that no other setting uses"
            )
        if o["preflight"] not in ("pass", "answer"):
            raise ConfigurationError(f"preflight must be 'pass' or 'answer', not {o['preflight']!r}")
        if o["cors_max_age"] < 0:
            raise ConfigurationError("cors_max_age must not be negative")
        trusted_proxies = o["trusted_proxies"]
        if isinstance(trusted_proxies, str):
            trusted_proxies = [p for p in trusted_proxies.split(",") if p.strip()]
        self.app = app
        self.validator = validator
        self.token_sources = sources
        self.require_token = o["require_token"]
        self.max_token_length = max_token_length
        self.trusted_proxies = TrustedHosts(trusted_proxies)
        self.proxy_header = proxy_header
        self._chain = proxy_header in ("x-forwarded-for", "forwarded")
        self.answer_preflight = o["preflight"] == "answer"
        self.cors = o["cors"]
        self.report_only = o["report_only"]
        self._exemption = Exemption(o["exempt"])
        self._exemption.discover(app)
        self._exempt_paths = self._exemption.paths
        self._query_name = token_query.encode("utf-8")
        self._query_key = token_query.encode("utf-8").lower()
        self._query_probe = self._query_key.translate(_PROBE)
        self._read_query = "query" in sources
        # The names of ours replace the common ones (`authorization`, a proxy header, ...).
        kinds = dict.fromkeys(_COMMON_HEADERS, _OTHER) | dict.fromkeys(_SEC_FETCH_HEADERS, _SEC_FETCH_HEADER)
        kinds |= {b"origin": _ORIGIN, b"referer": _REFERER, b"access-control-request-method": _PREFLIGHT}
        if "bearer" in sources:
            kinds[b"authorization"] = _AUTHORIZATION
        if "header" in sources:
            kinds[token_header.lower().encode("ascii")] = _TOKEN_HEADER
            # CGI (PHP, WSGI servers that keep them) reads `X_API_Key` as `X-API-Key`: the same
            # header, so two different values in them are two tokens.
            kinds.setdefault(token_header.lower().replace("-", "_").encode("ascii"), _TOKEN_HEADER)
        if self.trusted_proxies:
            kinds[proxy_header.encode("ascii")] = _PROXY
        self._kind_of = kinds.get  # bound once: binding it per request cost ~20 ns
        self._unavailable_logged = -1e9
        self._preflight_headers = (
            (b"access-control-allow-methods", ", ".join(cors_allow_methods).encode("ascii")),
            (b"access-control-allow-headers", ", ".join(cors_allow_headers).encode("ascii")),
            (b"access-control-max-age", str(o["cors_max_age"]).encode()),
            (b"vary", b"Origin"),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type not in ("http", "websocket"):
            if scope_type == "lifespan":
                send = self._lifespan_send(send)
            await self.app(scope, receive, send)
            return
        # The one cost of exemptions to every other request: this set look-up.
        if scope["path"] in self._exempt_paths and self._exemption.applies(scope, self.app):
            scope.setdefault("state", {}).update(token_access=None, api_token=None)
            await self.app(scope, receive, send)
            return
        try:
            token, origin, origin_text, referer_text, sec_fetch, client_ip = self._read(scope)
        except Exception:
            # Input no server should hand us; whatever it was, it is not let through.
            log.warning("request could not be read; denied", exc_info=True)
            await self._reply(scope, send, FORBIDDEN, None)
            return
        if token is _MALFORMED:
            log.debug("ambiguous or oversized origin, referer or token: denied")
            await self._reply(scope, send, FORBIDDEN, origin, self._refused(AMBIGUOUS))
            return
        if token is _PREFLIGHT_REQUEST:
            # A preflight never carries the token: the browser checks the real request's reply.
            if self.answer_preflight and origin:
                await self._answer_preflight(send, origin)
            else:
                await self.app(scope, receive, send)
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        if token is None:
            state["token_access"] = state["api_token"] = None
            if self.require_token:
                await self._reply(scope, send, UNAUTHORIZED, origin)
            else:
                await self.app(scope, receive, send)
            return
        # `screen_cached` by position (`Validator.screen_hit`): a call by keyword cost ~150 ns.
        screened = self.validator.screen_hit(
            token, origin_text, referer_text, sec_fetch, client_ip, self.report_only
        )
        if screened is None:
            try:
                screened = await self.validator.screen(
                    token,
                    origin=origin_text,
                    referer=referer_text,
                    sec_fetch=sec_fetch,
                    client_ip=client_ip,
                    report_only=self.report_only,
                )
            except StoreUnavailable:
                now = time.monotonic()
                # One line per interval, not one per request of an outage.
                if now - self._unavailable_logged > 10.0:
                    self._unavailable_logged = now
                    log.warning("restriction store unavailable and nothing cached: answering 503")
                await self._reply(scope, send, UNAVAILABLE, origin)
                return
        decision = screened[0] if isinstance(screened, tuple) else screened
        state["token_access"] = decision
        state["api_token"] = token
        if not decision.allowed:
            ref = self._denial_ref(screened)
            if log.isEnabledFor(logging.DEBUG):
                self._log_denial(token, decision)
            await self._reply(scope, send, FORBIDDEN, origin, ref)
            return
        # No CORS headers added here, even with `cors`: the app's own policy says who may read
        # its responses (P-CORS-NEVER-WIDENS).
        await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        # The app keeps its own lifespan; the validator starts with it and is closed once the
        # app has shut down, so nobody has to remember `connect()`/`close()`.
        validator = self.validator

        async def send_through(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                validator.start()
                # Routes added after the middleware was built are known now.
                self._exemption.discover(self.app)
                self._exempt_paths = self._exemption.paths
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                try:
                    await validator.close()
                except Exception:
                    log.warning("closing the validator at shutdown failed", exc_info=True)
            await send(message)

        return send_through

    # -------------------------------------------------------------------------- reading

    def _read(self, scope: Scope) -> _Read:
        """The token, source signals and client address of a request, read in one pass over
        its headers; in place of the token, `_MALFORMED` (refused: a repeated or conflicting
        value) or `_PREFLIGHT_REQUEST` (a CORS preflight)."""
        origin = referer = authorization = token_header = None
        proxy: list[bytes] | None = None
        sec_fetch = preflight = malformed = False
        kind_of = self._kind_of
        # Most headers are none of ours: for them the loop is one dict look-up, and for a name
        # not in `_COMMON_HEADERS`, until the first Sec-Fetch-* header, one prefix test.
        for name, value in scope["headers"]:
            kind = kind_of(name)
            if kind is None:
                if not sec_fetch and name.startswith(_SEC_FETCH):
                    sec_fetch = True
            elif kind == _OTHER:
                continue
            elif kind == _TOKEN_HEADER:
                if token_header is not None and token_header != value:
                    malformed = True
                token_header = value
            elif kind == _AUTHORIZATION:
                if authorization is not None and authorization != value:
                    malformed = True
                authorization = value
            elif kind == _ORIGIN:
                # Browsers send one serialised origin; a list (RFC 6454's `a b`, or `a, b` after a
                # proxy merged two headers) or a repeat means someone is playing games.
                if origin is not None:
                    malformed = True
                origin = value.strip()
                if b"," in origin or b" " in origin:
                    malformed = True
            elif kind == _REFERER:
                if referer is not None:
                    malformed = True
                referer = value
            elif kind == _SEC_FETCH_HEADER:
                sec_fetch = True
            elif kind == _PROXY:
                if proxy is None:
                    proxy = [value]
                else:
                    proxy.append(value)
            else:
                preflight = True
        if malformed:
            return _MALFORMED, origin, None, None, sec_fetch, None
        token: str | _Verdict | None
        if (
            authorization is None
            and token_header is not None
            and not (self._read_query and scope.get("query_string"))
        ):
            # `_token` for the common request, the token header alone and no query, without the
            # call (~70 ns of ~1.7 us, benchmarks: middleware, in process).
            found = token_header.strip()
            if not found:
                token = None
            elif len(found) > self.max_token_length:
                token = _MALFORMED
            else:
                token = found.decode("latin-1")
        else:
            token = self._token(scope, authorization, token_header)
        if token is _MALFORMED:
            return _MALFORMED, origin, None, None, sec_fetch, None
        if token is None:
            # A CORS preflight never carries the token (browsers send no credentials with it).
            # One that does is no preflight: its token is checked, whatever the method, like any
            # other request's (P-TOKEN-ANY-METHOD): an app that does not dispatch on the method
            # would serve it.
            if preflight and origin and scope["type"] == "http" and scope.get("method") == "OPTIONS":
                return _PREFLIGHT_REQUEST, origin, None, None, sec_fetch, None
            return None, origin, None, None, sec_fetch, None
        origin_text = None if origin is None else origin.decode("latin-1")
        referer_text = None if referer is None else referer.decode("latin-1")
        # The address only matters to back-end requests; front-end ones skip the proxy walk.
        # This is classify()'s rule (validator/rules/decide.py) inlined on the bytes: a non-empty
        # Origin, any Referer (even an empty one) or a Sec-Fetch-* header makes a front-end request.
        if origin or referer is not None or sec_fetch:
            return token, origin, origin_text, referer_text, sec_fetch, None
        client = scope.get("client")
        client_ip: str | None = client[0] if client else None
        if proxy is not None and client_ip in self.trusted_proxies:
            client_ip = self._forwarded_client(proxy)
        return token, origin, origin_text, referer_text, sec_fetch, client_ip

    def _token(
        self, scope: Scope, authorization: bytes | None, token_header: bytes | None
    ) -> str | _Verdict | None:
        """The token of the request: the one value every source in `token_sources` that holds a
        token agrees on (docs/behaviour.md, "One token per request"); `_MALFORMED` when two
        differ or the token is longer than `max_token_length`."""
        found: bytes | None = None
        # Straight-line code, not a loop over the sources: the common request holds one token
        # and pays a test or two for the others (README, middleware cost).
        if (
            authorization is not None
            and (
                authorization[:7].lower() == b"bearer "
                # `Bearer<TAB>token`: no token to RFC 7235 (one space), but apps that take the token
                # with `Bearer\s+` (league/oauth2-server, Express and PHP code alike) read one: so do we.
                or (authorization[:6].lower() == b"bearer" and authorization[6:7] in _BEARER_SPACE)
            )
        ):
            found = authorization[7:].strip() or None
        if token_header is not None and (value := token_header.strip()):
            if found is not None and value != found:
                # Which one would the app use? A decoy beside a stolen token must not pass.
                return _MALFORMED
            found = value
        query = scope.get("query_string") if self._read_query else None
        # A query that may hold the parameter under any name a framework reads as it
        # (`query_names`): percent-encoded, or the name with `_` spelled `.`, `+`, `[` or a
        # byte 0x80-0x9F, in any case. One C pass over the query for the others.
        if query and (
            self._query_name in query or b"%" in query or self._query_probe in query.translate(_PROBE)
        ):
            # Compared decoded: `api_key=a%62` is the token `ab`, as the app's framework reads it.
            in_query = self._query_token(query)
            if in_query is _MALFORMED:
                return _MALFORMED
            if in_query:
                if found is not None and in_query != found:
                    return _MALFORMED
                found = in_query
        if found is None:
            return None
        if len(found) > self.max_token_length:
            return _MALFORMED
        # A byte outside `!`..`~` decodes to a character `Validator.check` refuses before any
        # look-up (docs/behaviour.md, "Tokens are visible ASCII"); only checked tokens are ever cached, so
        # a cache hit needs no such test.
        return found.decode("latin-1")

    def _query_token(self, query: bytes) -> bytes | Literal[_Verdict.MALFORMED] | None:
        """The `token_query` parameter's value, percent-decoded; `_MALFORMED` when it comes
        twice with different values. The parameter is every query name that a mainstream
        framework reads as `token_query` (`query_names`), and every pair after a `;` as well as
        after a `&` (Rack 2 splits at both): a decoy where this code looks and the stolen token
        where the app looks is refused (docs/behaviour.md, P-ONE-TOKEN-MANGLED-NAMES)."""
        name = self._query_name
        found: bytes | None = None
        malformed = False
        if b"%" not in query and b";" not in query and query.translate(_PROBE) == query:
            # Nothing any framework reads otherwise (no escape, no `;`, no upper case, none of
            # `.+[] `, no 0x80-0x9F): only the exact name is the parameter, as before.
            for pair in query.split(b"&"):
                key, _, value = pair.partition(b"=")
                if key == name:
                    if found is not None and found != value:
                        malformed = True
                    found = value
            return _MALFORMED if malformed else found
        wanted = self._query_key
        probe = self._query_probe
        # Whether a name without escapes may spell the parameter: else only escaped ones can.
        spelled = probe in query.translate(_PROBE)
        pairs = query.split(b"&")
        if b";" in query:
            pairs = [piece for pair in pairs for piece in (pair, *pair.split(b";"))]
        for pair in pairs:
            key, _, value = pair.partition(b"=")
            if key != name:
                # The probe first (a name that holds no spelling of `token_query` is none of
                # its names), then the frameworks' rules for the few that do.
                if b"%" in key:
                    if probe not in _unquote(key).translate(_PROBE) or wanted not in query_names(key):
                        continue
                elif not spelled or probe not in key.translate(_PROBE) or wanted not in query_names(key):
                    continue
            if b"%" in value or b"+" in value:
                value = _unquote(value)
            if found is not None and found != value:
                malformed = True
            found = value
        return _MALFORMED if malformed else found

    def _forwarded_client(self, proxy: list[bytes]) -> str | None:
        """The client that the proxy header names, for a connection from a trusted proxy."""
        if not self._chain:
            # The edge's own header: exactly one value, exactly one address.
            if len(proxy) != 1:
                return None
            value = proxy[0].decode("latin-1")
            # Only values an address can fill are remembered (P-PARSE-CACHE-BOUNDED).
            return one_address(value) if len(value) <= 128 else one_address.__wrapped__(value)
        merged = ",".join(value.decode("latin-1") for value in proxy)
        if self.proxy_header == "forwarded":
            return self.trusted_proxies.client(forwarded_hops(merged))
        return self.trusted_proxies.client(x_forwarded_for_hops(merged))

    # -------------------------------------------------------------------------- answering

    async def _reply(
        self, scope: Scope, send: Send, reply: Reply, origin: bytes | None, ref: bytes | None = None
    ) -> None:
        """Send `reply`; a 403 carries `Access-Denied-Ref` (`ref`, or that of a request refused
        before any check), readable by page script when `cors` is on."""
        forbidden = reply is FORBIDDEN
        if forbidden:
            headers = [*reply.headers, (b"access-denied-ref", ref or self._refused(UNREADABLE))]
        else:
            headers = list(reply.headers)
        if scope["type"] != "http":
            if "websocket.http.response" in (scope.get("extensions") or {}):
                await send(
                    {"type": "websocket.http.response.start", "status": reply.status, "headers": headers}
                )
                await send({"type": "websocket.http.response.body", "body": reply.body})
            else:
                # Closing before accepting makes the server refuse the handshake with a 403.
                await send({"type": "websocket.close", "code": 1008})
            return
        if self.cors:
            if origin and _ECHOABLE.fullmatch(origin):
                headers += ((b"access-control-allow-origin", origin), (b"vary", b"Origin"))
            if forbidden:
                headers.append(_EXPOSE_REF)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    def _denial_ref(self, screened: Decision | Denied) -> bytes:
        """The reference of a denial, as the check returned it (see `DenialLog.ref`)."""
        denials = self.validator.denial_log
        if isinstance(screened, tuple):
            if denials is not None:
                return denials.ref(screened)
            screened = screened[0]
        if screened.reason is _MALFORMED_TOKEN_REASON:
            return self._refused(MALFORMED_TOKEN)  # refused before any look-up: nothing logged
        return self.validator.store.denial_refs.encode(UNLOGGED, False, int(time.time() * 1000), "", 0)

    def _refused(self, why: int) -> bytes:
        """The reference of a request refused before any token check (`REFUSALS`)."""
        return self.validator.store.denial_refs.refused(int(time.time() * 1000), why)

    async def _answer_preflight(self, send: Send, origin: bytes) -> None:
        headers = list(self._preflight_headers)
        if _ECHOABLE.fullmatch(origin):
            headers.append((b"access-control-allow-origin", origin))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _log_denial(self, token: str, decision: Decision) -> None:
        source = decision.source.value if decision.source else "-"
        log.debug(
            "denied token %s: %s (%s)",
            fingerprint(self.validator.store.token_hash(token)),
            decision.reason.value,
            source,
        )


# The probe of `_token`: lower case, and `_` for each byte that some framework reads as `_` in a
# query name (PHP: `.`, space (`+`), the first `[`; and 0x80-0x9F, as reported of PHP) or that
# marks a nested name (`[`, `]`).
_PROBE = bytes(
    0x5F if byte in b".+[] " or 0x80 <= byte <= 0x9F else (byte + 32 if 0x41 <= byte <= 0x5A else byte)
    for byte in range(256)
)


def query_names(raw: bytes) -> set[bytes]:
    """The parameter names that mainstream frameworks read the query name `raw` (as sent:
    percent-encoded) as, in lower case (P-ONE-TOKEN-MANGLED-NAMES). Generous on purpose: a name
    in here that no framework reads as the token parameter costs nothing but a refusal of a
    request that sends two different values, one under each.

    - as decoded (Starlette, Django, Flask, Go, Spring, Express's default parser; ASP.NET Core
      compares names without case, hence lower case for all);
    - PHP (`main/php_variables.c`, `php_register_variable_ex`): the name ends at a NUL byte,
      leading spaces are dropped, `.` and ` ` become `_` up to the first `[`; that `[` opens an
      array index when a `]` follows (the name is what precedes it), else becomes `_` itself;
      bytes 0x80-0x9F are taken as `_` too (reported of PHP; harmless if not);
    - Rack/Rails: the name before the first `[` (`api_key[]`, `api_key[x]`), Rack 2 also
      dropping leading and trailing brackets (`[api_key]`);
    - Express `qs`: the name before the first complete `[...]` (`api_key[0]`), and with
      `allowDots` the name before the first `.` (`api_key.x`).
    """
    name = _unquote(raw) if b"%" in raw or b"+" in raw else raw
    names = {name}
    # PHP
    php = name.split(b"\0", 1)[0].lstrip(b" ")
    bracket = php.find(b"[")
    head = php if bracket == -1 else php[:bracket]
    head = head.translate(_PHP_UNDERSCORE)
    if bracket == -1 or php.find(b"]", bracket + 1) != -1:
        names.add(head)
    else:
        names.add(head + b"_" + php[bracket + 1 :])
    # Rack 3, qs: before the first `[` (Rack 3 from the second byte on), before the first `.`.
    for cut in (name.find(b"["), name.find(b"[", 1), name.find(b".")):
        if cut > 0:
            names.add(name[:cut])
    # Rack 2: the first run of non-bracket bytes after leading brackets.
    stripped = name.lstrip(b"[]")
    end = min((i for i in (stripped.find(b"["), stripped.find(b"]")) if i != -1), default=len(stripped))
    names.add(stripped[:end])
    return {n.lower() for n in names}


# PHP's `_` for `.` and ` ` (and 0x80-0x9F, see `query_names`).
_PHP_UNDERSCORE = bytes(0x5F if byte in b". " or 0x80 <= byte <= 0x9F else byte for byte in range(256))


def _unquote(value: bytes) -> bytes:
    from urllib.parse import unquote_to_bytes  # only for percent-encoded parameters

    return unquote_to_bytes(value.replace(b"+", b" "))
