"""The forward-auth gate: the same check in front of any HTTP service, behind nginx, Traefik,
Caddy or Envoy. `validator-gate --proxy nginx --trusted-proxies 10.0.0.2 --store redis://...`
(or `python -m validator.web.gate`).

The proxy asks the gate about every request (nginx `auth_request`, Traefik `ForwardAuth`, Caddy
`forward_auth`, Envoy `ext_authz` in HTTP mode) and lets it through on a 2xx. The gate rebuilds
the original request from the headers that proxy sends (`--proxy` says which: never guessed from
the headers, which a client could forge for another flavour) and runs `TokenAccessMiddleware` on
it, so the token, source and client-address rules, the 403/401/503 bodies and the store, cache,
invalidation, report-only and denial log are those of an embedded validator.

Answers: allowed, 200 with `X-Token-Access: allowed` (`reported` in report-only) and
`X-Token-Fingerprint`; denied, 403 with the exact JSON body; no token, 401; store down with
nothing cached, 503. A request the gate cannot understand (a forward-auth header missing,
repeated or malformed), or one from a peer outside `--trusted-proxies`, gets the 403.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, NoReturn, Unpack

from validator.core import Validator
from validator.errors import ConfigurationError
from validator.options import add_arguments, fields, resolved, split
from validator.store import StoreOptions, fingerprint
from validator.web.middleware import TokenAccessMiddleware
from validator.web.options import CheckOptions, GateOptions
from validator.web.proxy_headers import HTTP_TOKEN, TrustedHosts
from validator.web.responses import FORBIDDEN, METRICS_TYPE, metrics_renderer
from validator.web.types import ASGIApp, Receive, Scope, Send

__all__ = ["PROXIES", "Gate", "build_gate", "main"]

log = logging.getLogger("validator")


class _Flavour(NamedTuple):
    """What one proxy sends: the headers naming the original method and URI (None: the gate's
    request is the original one, as Envoy sends it), the original host and scheme, and the
    header naming the client by default."""

    method: bytes | None
    uri: bytes | None
    host: bytes | None
    proto: bytes | None
    client_header: str


_FORWARDED = _Flavour(
    b"x-forwarded-method", b"x-forwarded-uri", b"x-forwarded-host", b"x-forwarded-proto", "x-forwarded-for"
)
_FLAVOURS: Final[dict[str, _Flavour]] = {
    # The documented config: `proxy_set_header X-Original-Method $request_method;`,
    # `X-Original-URI $request_uri;`, `X-Real-IP $remote_addr;` (each replaces a client's copy).
    "nginx": _Flavour(b"x-original-method", b"x-original-uri", None, None, "x-real-ip"),
    # ForwardAuth and forward_auth set these four (replacing a client's copy) and X-Forwarded-For.
    "traefik": _FORWARDED,
    "caddy": _FORWARDED,
    # ext_authz (HTTP service): the original method, path_prefix + the original path and query,
    # the allowed_headers; X-Forwarded-For as the connection manager left it (with
    # use_remote_address, the peer appended), to which the authorization client appends Envoy's
    # own address (envoyproxy/envoy#21519): a trusted hop the walk steps over.
    "envoy": _Flavour(None, None, None, None, "x-forwarded-for"),
}
PROXIES: tuple[str, ...] = tuple(_FLAVOURS)

_GATE_HOST, _CLIENT = 4, 5  # slots of the gate's own Host (dropped), of the client header (kept)
_ASGI: Final = {"version": "3.0"}
# Methods that need no syntax check (any other must be an RFC 9110 token).
_COMMON_METHODS = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")}
# A request target as a proxy copies it: no whitespace, no control characters.
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_ABSOLUTE = re.compile(rb"https?://[^/?]*", re.IGNORECASE)
_HEALTH_PATHS = ("/healthz", "/metrics")
_LOG_INTERVAL = 10.0
_FINGERPRINTS = 4096  # tokens whose fingerprint is kept, each ~100 bytes


class Gate:
    """The forward-auth ASGI app (`build_gate` builds it; see the module docstring)."""

    def __init__(self, validator: Validator, **options: Unpack[GateOptions]) -> None:
        """`options`: `GateOptions` (validator/web/options.py, which says each one's default;
        `proxy` and `trusted_proxies` are required). Raises `ConfigurationError` on bad ones."""
        o = resolved(GateOptions, options, owner="the gate")
        proxy = o["proxy"]
        flavour = _FLAVOURS.get(proxy)
        if flavour is None:
            raise ConfigurationError(f"proxy must be one of {', '.join(PROXIES)}, not {proxy!r}")
        client_header = (o["client_header"] or flavour.client_header).lower()
        forward_auth = {flavour.method, flavour.uri, flavour.host, flavour.proto} - {None}
        if client_header.encode("ascii", "replace") in forward_auth:
            raise ConfigurationError(f"client header {client_header!r} already carries the original request")
        self.validator = validator
        self.proxy = proxy
        # Everything a request decides is decided by the middleware: the token, the source, the
        # client behind the trusted proxies, and the replies (preflights pass, to `_allowed`).
        # With `cors`, refusals are readable by page script on another origin where the proxy
        # passes the gate's answer through (Traefik, Envoy, Caddy).
        checked, _ = split(o, CheckOptions)
        self.check = TokenAccessMiddleware(
            self._allowed, validator=validator, proxy_header=client_header, preflight="pass", **checked
        )
        self.trusted = self.check.trusted_proxies
        if not self.trusted:
            raise ConfigurationError(
                "trusted proxies are required: the addresses (or CIDR networks) the proxy calls the gate from"
            )
        self._client_header = client_header.encode("ascii")
        self._slots: dict[bytes, int] = {}
        for slot, name in enumerate(flavour[:4]):
            if name is not None:
                self._slots[name] = slot
        if flavour.host is not None:
            self._slots[b"host"] = _GATE_HOST  # the gate's own name, replaced by the original's
        self._slots[self._client_header] = _CLIENT
        self._rebuilt = flavour.uri is not None
        self._fingerprints: dict[str, bytes] = {}
        self._logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.metrics = metrics_renderer(validator)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        client = scope.get("client")
        if client is None or client[0] not in self.trusted:
            # Anyone else could name any client and any origin: nothing from them is believed.
            self._warn(
                "untrusted", "request from %s, which is not in the trusted proxies: refused (403)", client
            )
            await self.check._reply(scope, send, FORBIDDEN, None)
            return
        try:
            original = self._original(scope) if self._rebuilt else self._as_sent(scope)
        except Exception:
            log.warning("forward-auth request could not be read; denied", exc_info=True)
            original = "unreadable"
        if isinstance(original, str):
            if original in _HEALTH_PATHS:
                await self._own(original, send)
                return
            self._warn(
                "malformed",
                "forward-auth request refused (403): %s; check the proxy's configuration (--proxy %s)",
                original,
                self.proxy,
            )
            await self.check._reply(scope, send, FORBIDDEN, None)
            return
        await self.check(original, receive, send)

    # -------------------------------------------------------------------------- reading

    def _original(self, scope: Scope) -> Scope | str:
        """The original request's scope, from the forward-auth headers nginx, Traefik or Caddy
        send; or the gate's own path (`/healthz`, `/metrics`) called without them; or why the
        request cannot be understood."""
        found: list[bytes | None] = [None, None, None, None]
        repeated = client_named = False
        headers: list[tuple[bytes, bytes]] = []
        slot_of = self._slots.get
        for header in scope["headers"]:
            slot = slot_of(header[0])
            if slot is None:
                headers.append(header)
            elif slot == _CLIENT:
                client_named = True
                headers.append(header)
            elif slot != _GATE_HOST:
                # A proxy replaces these; two of them means one came from elsewhere.
                if found[slot] is not None:
                    repeated = True
                found[slot] = header[1]
        method, uri, host, proto = found
        if method is None and uri is None and host is None and proto is None:
            # Not a forward-auth request: the gate's own endpoints, or a misconfigured proxy.
            path = scope["path"]
            if path in _HEALTH_PATHS and scope["method"] in ("GET", "HEAD"):
                return str(path)
        if repeated:
            return "a forward-auth header came twice"
        if method is None or uri is None:
            return "no original method or URI header"
        if not client_named:
            return f"no {self._client_header.decode()} header"
        method_text = _COMMON_METHODS.get(method)
        if method_text is None:
            method_text = method.decode("latin-1")
            if not HTTP_TOKEN.fullmatch(method_text):
                return "the original method is not a method"
        if not _TARGET.fullmatch(uri):
            return "the original URI is empty or holds whitespace or control characters"
        if uri[0] != 0x2F:  # "/"
            absolute = _ABSOLUTE.match(uri)  # absolute-form (RFC 9112 3.2.2): path and query only
            if absolute is None:
                return "the original URI is not a path"
            uri = uri[absolute.end() :] or b"/"
            if uri[0] == 0x3F:  # "?"
                uri = b"/" + uri
        raw_path, _, query = uri.partition(b"?")
        if host is not None:
            headers.append((b"host", host))
        return {
            "type": "http",
            "asgi": scope.get("asgi", _ASGI),
            "http_version": scope.get("http_version", "1.1"),
            "method": method_text,
            "scheme": "https" if proto == b"https" else "http",
            "path": raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": scope["client"],
            "server": scope.get("server"),
            "state": {},
        }

    def _as_sent(self, scope: Scope) -> Scope | str:
        """Envoy's request, which is the original one (its path behind `path_prefix`)."""
        if scope["path"] == "/healthz" and scope["method"] in ("GET", "HEAD"):
            return "/healthz"
        client_header = self._client_header
        for name, _ in scope["headers"]:
            if name == client_header:
                return scope
        return f"no {client_header.decode()} header"

    # -------------------------------------------------------------------------- answering

    async def _allowed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app behind the middleware: it runs only for an allowed request (or a CORS
        preflight, which carries no token) and says so to the proxy."""
        state = scope.get("state") or {}
        decision = state.get("token_access")
        if decision is None:
            headers = [(b"content-length", b"0"), (b"x-token-access", b"preflight")]
        else:
            headers = [
                (b"content-length", b"0"),
                (b"x-token-access", b"reported" if decision.reported else b"allowed"),
                (b"x-token-fingerprint", self._fingerprint(state["api_token"])),
            ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _fingerprint(self, token: str) -> bytes:
        # A keyed hash per allowed request costs ~1 us; the tokens in use are few.
        found = self._fingerprints.get(token)
        if found is None:
            if len(self._fingerprints) >= _FINGERPRINTS:
                self._fingerprints.clear()
            found = self._fingerprints[token] = fingerprint(self.validator.store.token_hash(token)).encode()
        return found

    async def _own(self, path: str, send: Send) -> None:
        status, body, content_type = 200, b"ok", b"text/plain; charset=utf-8"
        if path == "/metrics" and self.metrics is not None:
            body, content_type = self.metrics(), METRICS_TYPE
        elif path == "/metrics":
            status, body = 404, b"metrics need prometheus-client (the `metrics` extra)"
        elif not self._rebuilt:
            # Envoy lets a request through on a 200 only, and here the gate's path is the
            # original request's: a client's own `GET /healthz` must not be allowed by it.
            status, body = 204, b""
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """One line per kind per interval, with how many were not logged since: a flood of bad
        requests must not become a flood of log lines."""
        now = time.monotonic()
        if now - self._logged.get(kind, -1e9) < _LOG_INTERVAL:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._logged[kind] = now
        more = self._suppressed.pop(kind, 0)
        log.warning(message + (f" ({more} more since the last such line)" if more else ""), *args)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    # Waits (up to 1 s) for the invalidation connection; an unreachable store is
                    # no error: checks answer 503 until it answers.
                    await self.validator.connect()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.validator.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_gate(validator: Validator, **options: Unpack[GateOptions]) -> ASGIApp:
    """The forward-auth app for `proxy` (nginx, traefik, caddy or envoy), believing the client
    address only from `trusted_proxies` (required) in `client_header` (default: nginx
    `X-Real-IP`, the others `X-Forwarded-For`); the other `GateOptions` as the middleware's.
    Raises `ConfigurationError` on bad settings."""
    return Gate(validator, **options)


# ------------------------------------------------------------------------------ command line

EXIT_USAGE = 2
_ENVIRONMENT = "_VALIDATOR_GATE_SETTINGS"  # the parent's settings, for `--workers` processes

EPILOG = """\
environment:
  VALIDATOR_STORE_URL             the store, when --store is not given
  VALIDATOR_SECRET                key of the token hash: the admin tools' secret (prefer it to --secret)
  VALIDATOR_GATE_TRUSTED_PROXIES  the proxies' addresses, when --trusted-proxies is not given

Run one process per core (--workers N). Exit status: 2, bad arguments or settings; 1, the
server could not start (the port is taken, say).
"""


# The store's options the gate takes on its command line (the secret has a flag of its own).
_STORE_FLAGS = tuple(
    f for f in fields(StoreOptions) if f.name in ("key_prefix", "timeout", "connect_timeout")
)
_TOKEN_QUERY = next(f.option.default for f in fields(GateOptions) if f.name == "token_query")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="validator-gate",
        description="Answer forward-auth requests (nginx auth_request, Traefik ForwardAuth, Caddy "
        "forward_auth, Envoy ext_authz) with the token access check.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The check's flags, made from `GateOptions`; then the store's (but the secret, below) and
    # the server's.
    add_arguments(parser, sorted(fields(GateOptions), key=lambda f: not f.required), os.environ)
    add_arguments(parser, _STORE_FLAGS, os.environ)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--store", metavar="URL", default=os.environ.get("VALIDATOR_STORE_URL"))
    parser.add_argument("--secret", help="key of the token hash (better: $VALIDATOR_SECRET)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="processes (one per core)")
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (token query parameters redacted)"
    )
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a gate process is built from: the store URL, the options given (no secret: that goes
    by the environment)."""
    given = {
        f.name: getattr(args, f.name) for f in (*fields(GateOptions), *_STORE_FLAGS) if hasattr(args, f.name)
    }
    return {"store": args.store, **given}


def _from_settings(settings: dict[str, Any], secret: str | None = None) -> ASGIApp:
    store_options, options = split({k: v for k, v in settings.items() if k != "store"}, StoreOptions)
    return build_gate(Validator.from_url(settings["store"], secret=secret, **store_options), **options)


def _worker_app() -> ASGIApp:
    """uvicorn's factory in each `--workers` process: the gate of the parent's settings."""
    return _from_settings(json.loads(os.environ[_ENVIRONMENT]))


def main(argv: Sequence[str] | None = None) -> None:
    """Run `validator-gate` on its own server (uvloop, httptools)."""
    parser = _parser()
    args = parser.parse_args(argv)

    def fail(message: str) -> NoReturn:
        parser.exit(EXIT_USAGE, f"validator-gate: error: {message}\n")

    if not getattr(args, "trusted_proxies", None):
        fail(
            "--trusted-proxies is required: the addresses or networks the proxy calls the gate from "
            "(or set VALIDATOR_GATE_TRUSTED_PROXIES)"
        )
    if not args.store:
        fail("no store given: use --store URL or set VALIDATOR_STORE_URL (e.g. redis://127.0.0.1:6379/0)")
    if args.workers < 1:
        fail("--workers must be at least 1")
    try:
        import httptools  # noqa: F401  # the `gate` extra: the server's parser
        import uvicorn  # noqa: F401  # its log formats
        import uvloop  # noqa: F401  # the server's loop
    except ImportError:
        fail("the gate needs the `gate` extra: pip install 'token-access-validator[gate]'")
    if args.secret is not None:
        print("validator-gate: --secret lands in shell history and process lists; prefer VALIDATOR_SECRET",
              file=sys.stderr)  # fmt: skip
        os.environ["VALIDATOR_SECRET"] = args.secret  # for the --workers processes
    settings = _settings(args)
    try:
        TrustedHosts(p for p in args.trusted_proxies.split(",") if p.strip())  # before the store speaks
        app = _from_settings(settings, args.secret)
    except ConfigurationError as error:
        fail(str(error))
    from validator.web.redaction import uvicorn_log_config

    log_config = uvicorn_log_config(names=(settings.get("token_query", _TOKEN_QUERY),))
    # The validator's own lines (store unavailable, denials, refused peers) beside uvicorn's.
    log_config["loggers"]["validator"] = {
        "handlers": ["default"],
        "level": args.log_level.upper(),
        "propagate": False,
    }
    import logging.config

    from validator.web.gate_server import serve

    logging.config.dictConfig(log_config)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(args.log_level.upper())
    if args.workers > 1:
        os.environ[_ENVIRONMENT] = json.dumps(settings)  # each worker builds its own gate
    # The gate's own server (validator/web/gate_server.py): uvicorn's parser, not its request cycle.
    status = serve(
        (lambda: app) if args.workers == 1 else _worker_app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
    )
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main(sys.argv[1:])
