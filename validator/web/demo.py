"""A small protected API: `python -m validator.web.demo [--store URL] [--host H] [--port P]`.

`GET /v1/hello` is protected by `TokenAccessMiddleware`; `GET /` is a page whose script calls
it with `fetch()`, so a person (or the end-to-end tests) can watch a browser be allowed or
denied. With a `memory://` store (the default) the demo seeds a few tokens and prints them with
ready-to-paste curl commands; no Redis server is needed.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from collections.abc import Sequence

import msgspec

from validator.admin.api import Admin
from validator.core import Validator
from validator.errors import ConfigurationError
from validator.model import Restrictions
from validator.web.middleware import ASGIApp, Receive, Scope, Send, TokenAccessMiddleware
from validator.web.redaction import uvicorn_log_config
from validator.web.responses import METRICS_TYPE, metrics_renderer, with_cors

__all__ = ["SEED", "DemoApp", "main"]


class SeedToken(msgspec.Struct, frozen=True):
    token: str
    restrictions: Restrictions
    about: str


# `localhost` is listed and `127.0.0.1` is not, so the same page opened under each name shows a
# front-end request allowed and denied. The loopback addresses are private: the demo stores
# them with `allow_private`, which a real deployment would not.
SEED: tuple[SeedToken, ...] = (
    SeedToken("demo-open", Restrictions(), "no restrictions: any request is allowed"),
    SeedToken(
        "demo-browser",
        Restrictions(domain_enabled=True, domains=["localhost", "app.test"]),
        "domain restriction (localhost, app.test): pages on those hosts only; back-end use denied",
    ),
    SeedToken(
        "demo-server",
        Restrictions(ip_enabled=True, ips=["127.0.0.1", "::1", "203.0.113.7"]),
        "IP restriction (127.0.0.1, ::1, 203.0.113.7): servers on those addresses only; browsers denied",
    ),
    SeedToken(
        "demo-both",
        Restrictions(domain_enabled=True, ip_enabled=True, domains=["localhost"], ips=["203.0.113.7"]),
        "both: pages on localhost, servers on 203.0.113.7",
    ),
)

_HELLO = b'{"message": "Hello from the protected API."}'
_NOT_FOUND = b'{"error": "Not found."}'


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def api(scope: Scope, receive: Receive, send: Send) -> None:
    """The protected API itself; it knows nothing of tokens."""
    if scope["type"] != "http":
        await send({"type": "websocket.close", "code": 1000})
        return
    for name, value in scope["headers"]:
        if name == b"origin":
            # The demo API's own CORS policy: public data, no cookies, so a page on any origin
            # may read it. The middleware adds CORS headers to its refusals only
            # (P-CORS-NEVER-WIDENS).
            if _READABLE_ORIGIN.fullmatch(value):
                send = with_cors(send, value)
            break
    if scope["path"] == "/v1/hello" and scope["method"] in ("GET", "HEAD"):
        await _respond(send, 200, _HELLO)
    else:
        await _respond(send, 404, _NOT_FOUND)


_READABLE_ORIGIN = re.compile(rb"https?://[!-~]+")


def page(tokens: Sequence[SeedToken]) -> bytes:
    """The HTML page that calls the API from a browser with `fetch()`."""
    buttons = "\n".join(
        f'<li><button data-token="{html.escape(t.token)}">{html.escape(t.token)}</button> '
        f"{html.escape(t.about)}</li>"
        for t in tokens
    )
    return _PAGE.replace("{buttons}", buttons).encode()


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Token access demo</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; max-width: 50rem; margin: 2rem auto; padding: 0 1rem; }
pre { background: #f4f4f4; padding: 1rem; white-space: pre-wrap; }
.allowed { color: #060; } .denied { color: #a00; }
</style>
</head>
<body>
<h1>Token access demo</h1>
<p>This page was loaded from <code id="origin"></code>. Its script calls the API with
<code>fetch()</code>; the browser adds <code>Origin</code> or <code>Referer</code>, so the API
treats the call as front-end use and checks this page's host against the token's domain list.
Open it as <a id="listed" href="/">localhost</a> (a listed domain of <code>demo-browser</code>)
and as <a id="unlisted" href="/">127.0.0.1</a> (not listed) to see both outcomes.</p>
<p><label>API base URL <input id="base" size="40"></label></p>
<ul id="tokens">
{buttons}
</ul>
<p><label>Token <input id="token" size="30"></label> <button id="call">GET /v1/hello</button></p>
<pre id="result">(no call yet)</pre>
<script>
// Calls GET /v1/hello with the token; shows and returns {status, body}.
async function callApi(token, base) {
  base = base || document.getElementById("base").value || location.origin;
  let result;
  try {
    const response = await fetch(base + "/v1/hello", {headers: {"X-API-Key": token}});
    result = {status: response.status, body: await response.text()};
  } catch (error) {
    result = {status: 0, body: String(error)};
  }
  const out = document.getElementById("result");
  out.className = result.status === 200 ? "allowed" : "denied";
  out.textContent = token + " from " + location.origin + ": " + result.status + "\\n" + result.body;
  return result;
}
document.getElementById("origin").textContent = location.origin;
const port = location.port ? ":" + location.port : "";
document.getElementById("listed").href = "http://localhost" + port + "/";
document.getElementById("unlisted").href = "http://127.0.0.1" + port + "/";
document.getElementById("base").value = location.origin;
for (const button of document.querySelectorAll("[data-token]")) {
  button.addEventListener("click", () => callApi(button.dataset.token));
}
document.getElementById("call").addEventListener("click",
  () => callApi(document.getElementById("token").value));
</script>
</body>
</html>
"""


class DemoApp:
    """Routes `/v1/*` through the middleware (or not, for measuring it) and serves the page.

    Lifespan: connects the validator, seeds the example tokens when asked, prints how to try them.
    """

    def __init__(
        self,
        validator: Validator,
        *,
        trusted_proxies: Sequence[str] = (),
        protect: bool = True,
        seed: bool = False,
        base_url: str = "http://127.0.0.1:8000",
        report_only: bool = False,
    ) -> None:
        self.validator = validator
        self.seed = seed
        self.base_url = base_url
        self.api: ASGIApp = api
        if protect:
            self.api = TokenAccessMiddleware(
                api,
                validator=validator,
                trusted_proxies=trusted_proxies,
                preflight="answer",
                cors=True,
                report_only=report_only,
            )
        self.page = page(SEED if seed else ())
        self.metrics = metrics_renderer(validator)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["path"].startswith("/v1/"):
            await self.api(scope, receive, send)
        elif scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
        elif scope["path"] == "/":
            await _respond(send, 200, self.page, b"text/html; charset=utf-8")
        elif scope["path"] == "/metrics" and self.metrics is not None:
            await _respond(send, 200, self.metrics(), METRICS_TYPE)
        else:
            await _respond(send, 404, _NOT_FOUND)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.validator.connect()
                    if self.seed:
                        await seed(Admin(self.validator.store))
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                print(instructions(self.base_url, seeded=self.seed), flush=True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.validator.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def seed(admin: Admin) -> None:
    """Mark the store and store the example tokens' restrictions (loopback addresses included,
    for the demo): asking for a seed is asking for a store the demo may initialise."""
    await admin.init()
    for t in SEED:
        await admin.put(t.token, t.restrictions, allow_private=True)


def instructions(base_url: str, *, seeded: bool) -> str:
    """What to paste to see each outcome."""
    local = base_url.replace("127.0.0.1", "localhost")
    lines = ["", "Token access demo", ""]
    if seeded:
        lines += [f"  {t.token:<13} {t.about}" for t in SEED]
        lines += [
            "",
            "Try (curl is back-end use: the client address is what counts):",
            f"  curl -i -H 'X-API-Key: demo-server'  {base_url}/v1/hello   # 200: 127.0.0.1 is listed",
            f"  curl -i -H 'X-API-Key: demo-browser' {base_url}/v1/hello   # 403: front-end use only",
            f"  curl -i -H 'X-API-Key: demo-both'    {base_url}/v1/hello   # 403: 127.0.0.1 not listed",
            f"  curl -i -H 'Authorization: Bearer demo-open' {base_url}/v1/hello   # 200: unrestricted",
            f"  curl -i '{base_url}/v1/hello?api_key=demo-browser' -H 'Origin: {local}'   # 200: as a page",
            f"  curl -i {base_url}/v1/hello   # 401: no token",
        ]
    else:
        lines += ["  (store not seeded: add restrictions with validator.Admin, then call the API)"]
    lines += [
        "",
        f"Metrics: {base_url}/metrics",
        "",
        "In a browser, open (listed domain, then not listed):",
        f"  {local}/",
        f"  {base_url}/",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve the demo with uvicorn (uvloop, httptools)."""
    parser = argparse.ArgumentParser(
        prog="python -m validator.web.demo",
        description="Serve a small API protected by TokenAccessMiddleware.",
    )
    parser.add_argument("--store", default="memory://", help="restriction store URL (default: memory://)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS_OR_CIDR",
        help="believe X-Forwarded-For from this peer (repeatable; none by default)",
    )
    parser.add_argument(
        "--seed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store the example tokens (default: only for memory:// stores)",
    )
    parser.add_argument(
        "--no-middleware",
        action="store_true",
        help="serve the API unprotected (to measure what the middleware costs)",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (tokens in the query redacted)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="let denied requests through, logged and counted as would-be denials (a rollout)",
    )
    args = parser.parse_args(argv)

    try:
        import uvicorn  # the `demo` extra
        import uvloop  # noqa: F401  # uvicorn runs on it (loop="uvloop")
    except ImportError:
        print(
            "the demo needs the `demo` extra: pip install 'token-access-validator[demo]' "
            "(or run scripts/demo)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None

    seed_store = args.seed if args.seed is not None else args.store.startswith("memory://")
    display_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104
    if ":" in display_host:
        display_host = f"[{display_host}]"
    try:
        validator = Validator.from_url(args.store)
        app = DemoApp(
            validator,
            trusted_proxies=[p for entry in args.trusted_proxy for p in entry.split(",") if p.strip()],
            protect=not args.no_middleware,
            seed=seed_store,
            base_url=f"http://{display_host}:{args.port}",
            report_only=args.report_only,
        )
    except ConfigurationError as error:
        parser.exit(2, f"error: {error}\n")
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        # Client addresses are the middleware's business (--trusted-proxy); uvicorn rewriting
        # them too would walk X-Forwarded-For twice.
        proxy_headers=False,
        lifespan="on",
        access_log=args.access_log,
        # `?api_key=<token>` would stand in clear in the request lines uvicorn logs.
        log_config=uvicorn_log_config(),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
