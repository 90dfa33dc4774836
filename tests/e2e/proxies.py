"""Real nginx and Caddy in front of the gate (`python -m validator.web.gate`) and a small upstream.

Each proxy's configuration is the snippet docs/deploying.md shows (docs/deploying/nginx.conf,
docs/deploying/Caddyfile) with only its example addresses replaced by free loopback ports, so a
snippet the docs show is a snippet a test ran. Every process runs in the foreground with its own
configuration, temporary directory and log, and is stopped by the fixture that started it; every
wait polls a socket and has a deadline.

Addresses: the proxies connect to the gate from 127.0.0.1, the one address the gate trusts;
curl calls the proxies from 127.0.0.2 (`CLIENT_IP`), a loopback address that is *not* a trusted
proxy, as a real client would be. With both on 127.0.0.1, a chain such as
`X-Forwarded-For: 203.0.113.7, 127.0.0.1` would end in a trusted hop and prove nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import pytest

from tests.e2e.chromium import Chromium
from tests.e2e.conftest import SECRET, need
from tests.processes import stop_process, wait_answering
from tests.redis_servers import free_port
from validator import Admin, Restrictions

__all__ = [
    "BROWSER_CASES",
    "CLIENT_IP",
    "CURL_CASES",
    "FORBIDDEN",
    "PROXY_IP",
    "RESTRICTIONS",
    "UNAUTHORIZED",
    "UNAVAILABLE",
    "Caddy",
    "Foreground",
    "Gate",
    "Nginx",
    "Reply",
    "Upstream",
    "check_decision_reaches_the_app",
    "check_denial_ref_passes_through",
    "check_unavailable_is_503",
    "curl",
    "expect_error_cors",
    "expect_reply",
    "fetch_in_browser",
    "from_snippet",
    "gate_on",
    "put_token",
    "run_case",
]

SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "deploying"
CLIENT_IP = "127.0.0.2"
PROXY_IP = "127.0.0.1"

# The page the upstream serves at `/` (publicly, through the proxy): `callApi(token, base)` calls
# `base` + `/v1/hello` (by default on the page's own origin) with fetch(), as page script would.
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>gate e2e</title></head><body>
<script>
async function callApi(token, base) {
  try {
    const response = await fetch((base || "") + "/v1/hello", {headers: {"X-API-Key": token}});
    return {status: response.status, body: await response.text(),
            ref: response.headers.get("Access-Denied-Ref")};
  } catch (error) {
    return {status: 0, body: String(error), ref: null};
  }
}
</script>
</body></html>
"""


def from_snippet(name: str, replacements: Mapping[str, str]) -> str:
    """The snippet docs/deploying/`name`, with each example literal replaced. A literal the
    snippet no longer contains fails loudly: the docs changed, and the test must follow."""
    text = (SNIPPETS / name).read_text()
    for literal, value in replacements.items():
        if literal not in text:
            raise AssertionError(f"docs/deploying/{name} no longer contains {literal!r}")
        text = text.replace(literal, value)
    return text


def wait_listening(port: int, process: subprocess.Popen[bytes] | None, what: str, timeout: float) -> None:
    """Poll until something accepts connections on 127.0.0.1:`port` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection((PROXY_IP, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


class Foreground:
    """One program in the foreground, its output in a log file under its own temporary directory.
    As a context manager: started on entry, stopped and its directory removed on exit."""

    what = "a program"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"tav-{self.what}-"))
        self.log = self.dir / "output.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, host: str = PROXY_IP) -> str:
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _spawn(self, args: list[str], env: Mapping[str, str] | None = None) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=None if env is None else dict(env)
            )

    def _wait(self, timeout: float) -> None:
        try:
            wait_listening(self.port, self.process, self.what, timeout)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{error}; its output:\n{self.output()}") from None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no output)"

    def stop(self) -> None:
        stop_process(self.process)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Gate(Foreground):
    """`python -m validator.web.gate --proxy <flavour>` on a free port, trusting 127.0.0.1 only;
    ready when `/healthz` answers 200."""

    what = "gate"

    def __init__(self, flavour: str, store_url: str, *args: str) -> None:
        super().__init__()
        self.flavour = flavour
        self.store_url = store_url
        self.args = args

    def start(self, timeout: float = 20.0) -> None:
        command = [
            sys.executable, "-m", "validator.web.gate",
            "--proxy", self.flavour,
            "--trusted-proxies", PROXY_IP,
            "--host", PROXY_IP,
            "--port", str(self.port),
            "--store", self.store_url,
            *self.args,
        ]  # fmt: skip
        self._spawn(command, {**os.environ, "VALIDATOR_SECRET": SECRET})
        self._wait(timeout)
        try:
            wait_answering(self.url() + "/healthz", self.process, "the gate", self.output, timeout=timeout)
        except RuntimeError:
            self.stop()
            raise


# The snippet whose "The gate:" comment line gives the gate's command line, by flavour.
SNIPPET_OF = {"nginx": "nginx.conf", "caddy": "Caddyfile"}
# Options of that line the fixtures set themselves (addresses and ports of this test run).
_OWN_OPTIONS = ("--proxy", "--trusted-proxies", "--port", "--host", "--store")


def snippet_gate_flags(flavour: str) -> list[str]:
    """The gate's switches as the snippet's "The gate:" line runs it (`--cors` for Caddy), so the
    tests run the gate the way the documentation tells an operator to."""
    text = (SNIPPETS / SNIPPET_OF[flavour]).read_text()
    line = next(line for line in text.splitlines() if "The gate:" in line and "validator-gate" in line)
    words = line.split("validator-gate", 1)[1].split()
    flags: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in _OWN_OPTIONS:
            skip = True
        else:
            flags.append(word)
    return flags


def gate_on(flavour: str, store_url: str) -> Gate:
    """A gate (not started yet) on a store that holds some token (a store nobody ever wrote to
    may be taken for a wiped one), with the switches of the flavour's snippet."""
    put_token(store_url, f"tok-first-{uuid.uuid4().hex}", RESTRICTIONS["domain"])
    return Gate(flavour, store_url, *snippet_gate_flags(flavour))


def top_level_blocks(text: str) -> list[tuple[str, str]]:
    """(head, whole text) of each top-level `head { ... }` block of an nginx configuration, in
    order; braces inside quotes or comments do not count."""
    blocks: list[tuple[str, str]] = []
    depth, start, quote, comment = 0, 0, "", False
    for at, char in enumerate(text):
        if comment:
            comment = char != "\n"
        elif quote:
            if char == quote and text[at - 1] != "\\":
                quote = ""
        elif char == "#":
            comment = True
        elif char in "'\"":
            quote = char
        elif char == "{":
            if depth == 0:
                start = text.rfind("\n", 0, at) + 1
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                whole = text[start : at + 1]
                blocks.append((whole[: whole.index("{")].strip(), whole))
    return blocks


class Nginx(Foreground):
    """nginx running docs/deploying/nginx.conf (gate and app ports replaced) inside a minimal main
    configuration of the test's own: foreground, one worker, temporary files and pid under its
    own directory, errors to its log, nothing of /etc/nginx.

    With more than one app, each has a server of its own, on a port of its own (`ports`, in the
    order of the apps): the snippet's `upstream api_app` and `server` blocks repeated, the app's
    upstream renamed, everything else (the gate's upstream, any map) once."""

    what = flavour = "nginx"

    def __init__(self, gate_port: int, app_port: int, *more_apps: int) -> None:
        super().__init__()
        self.ports = [self.port, *(free_port() for _ in more_apps)]
        # Workers run as `nobody` when nginx starts as root: they must reach their temp dirs.
        self.dir.chmod(0o755)
        site = from_snippet(
            "nginx.conf",
            {
                "listen 80;": f"listen {PROXY_IP}:{self.port};",
                "server 127.0.0.1:9000;": f"server {PROXY_IP}:{gate_port};",
                "server 127.0.0.1:8080;": f"server {PROXY_IP}:{app_port};",
                "/var/log/nginx/access.log": str(self.dir / "access.log"),
            },
        )
        blocks = dict(top_level_blocks(site))
        for port, app in zip(self.ports[1:], more_apps, strict=True):
            upstream = blocks["upstream api_app"].replace(
                f"server {PROXY_IP}:{app_port};", f"server {PROXY_IP}:{app};"
            )
            server = blocks["server"].replace(f"listen {PROXY_IP}:{self.port};", f"listen {PROXY_IP}:{port};")
            name = f"api_app_{port}"
            site += (
                "\n"
                + upstream.replace("api_app", name)
                + "\n\n"
                + server.replace("http://api_app", f"http://{name}")
            )
        # The snippet's own access log, redacted (tests/e2e/test_access_log.py).
        self.access_log = self.dir / "access.log"
        (self.dir / "site.conf").write_text(site)
        temp = "\n".join(
            f"    {kind}_temp_path {self.dir / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.dir / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 1;
pid {self.dir / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
    include {self.dir / "site.conf"};
}}
"""
        )

    def start(self, timeout: float = 15.0) -> None:
        nginx = (
            shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin") or need("nginx")
        )
        # -e: errors before the configuration is read go to stderr, not to /var/log/nginx.
        self._spawn([nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", "stderr"])
        self._wait(timeout)
        for port in self.ports[1:]:
            wait_listening(port, self.process, self.what, timeout)


class Caddy(Foreground):
    """Caddy running docs/deploying/Caddyfile (site address, gate and app replaced), after global
    options of the test's own: no admin endpoint, no automatic HTTPS, loopback only, its storage,
    home and config under its own directory. With more than one app, the site is repeated, one
    port per app (`ports`, in the order of the apps)."""

    what = flavour = "caddy"

    def __init__(self, gate_port: int, app_port: int, *more_apps: int) -> None:
        super().__init__()
        self.ports = [self.port, *(free_port() for _ in more_apps)]
        sites = [
            from_snippet(
                "Caddyfile",
                {
                    "api.example.com {": f"http://:{port} {{",
                    "127.0.0.1:9000": f"{PROXY_IP}:{gate_port}",
                    "127.0.0.1:8080": f"{PROXY_IP}:{app}",
                },
            )
            for port, app in zip(self.ports, (app_port, *more_apps), strict=True)
        ]
        options = f"""{{
	admin off
	auto_https off
	default_bind {PROXY_IP}
	storage file_system {self.dir / "data"}
	log {{
		output stderr
		level ERROR
	}}
}}

"""
        (self.dir / "Caddyfile").write_text(options + "\n".join(sites))

    def start(self, timeout: float = 15.0) -> None:
        home = str(self.dir)
        env = {**os.environ, "HOME": home, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home}
        config = str(self.dir / "Caddyfile")
        self._spawn([need("caddy"), "run", "--config", config, "--adapter", "caddyfile"], env)
        self._wait(timeout)
        for port in self.ports[1:]:
            wait_listening(port, self.process, self.what, timeout)


class Upstream:
    """The app behind the proxy, in a thread of the test process: `/` serves `PAGE`; any other
    path answers 200 with JSON saying what it received (method, path, headers, lower-cased).
    It does CORS as an API would: preflights answered, `Access-Control-Allow-Origin` echoed."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer((PROXY_IP, 0), _Echo)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="upstream", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Origins whose pages the upstream's own CORS policy does not let read its answers.
APP_REFUSES_ORIGINS = frozenset({"https://evil.example.net"})


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        origin = self.headers.get("Origin")
        if origin and self.command == "OPTIONS" and self.headers.get("Access-Control-Request-Method"):
            self.send_response(204)
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Headers", "X-API-Key, Authorization")
            self.send_header("Access-Control-Allow-Methods", "GET, POST")
            self.send_header("Access-Control-Max-Age", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/":
            body, kind = PAGE, "text/html; charset=utf-8"
        else:
            seen = {
                "method": self.command,
                "path": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
            }
            body, kind = json.dumps(seen).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if origin and origin not in APP_REFUSES_ORIGINS:
            # The app's own CORS policy: every page may read it but those refused.
            self.send_header("Access-Control-Allow-Origin", origin)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, list[str]]  # lower-cased names, every value in order
    body: str

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return None if not values else ", ".join(values)

    def json(self) -> object:
        return json.loads(self.body)


def curl(url: str, *headers: str, method: str = "GET", source: str = CLIENT_IP) -> Reply:
    """One request with curl from `source`: status, response headers and body as the client sees
    them."""
    with tempfile.NamedTemporaryFile(prefix="tav-curl-") as body:
        args = [
            need("curl"), "-sS", "--max-time", "10",
            "--interface", source,
            "-X", method,
            "-o", body.name,
            "-w", "%{http_code}\n%{header_json}",
        ]  # fmt: skip
        for header in headers:
            args += ["-H", header]
        result = subprocess.run([*args, url], capture_output=True, text=True, timeout=15, check=True)
        status, _, header_json = result.stdout.partition("\n")
        return Reply(int(status), json.loads(header_json), Path(body.name).read_text())


# --------------------------------------------------------------------------- the cases

FORBIDDEN = {"error": "Access denied. You don't have permission to access this."}
UNAUTHORIZED = {"error": "API token required."}
UNAVAILABLE = {"error": "Access check unavailable. Try again later."}
LISTED_DOMAIN = "app.test"
ELSEWHERE = "203.0.113.7"  # a server's address the client pretends to have

RESTRICTIONS = {
    # curl's own address is listed (a loopback address: stored with allow_private, as tests may).
    "client-ip": Restrictions(ip_enabled=True, ips=[CLIENT_IP]),
    "elsewhere": Restrictions(ip_enabled=True, ips=[ELSEWHERE]),
    "domain": Restrictions(domain_enabled=True, domains=[LISTED_DOMAIN]),
}


def put_token(store_url: str, token: str, restrictions: Restrictions) -> None:
    """Store one token's restrictions through the Admin API, as an operator would."""

    async def put() -> None:
        admin = Admin.from_url(store_url, secret=SECRET)
        try:
            await admin.init()
            await admin.put(token, restrictions, allow_private=True)
        finally:
            await admin.close()

    asyncio.run(put())


# (restriction of {token}, request headers, query, status). `{decoy}` is a second token with the
# same restrictions: a request carrying two different tokens is refused whichever is checked.
KEY = "X-API-Key: {token}"
# curl calls from CLIENT_IP; the proxy names the client to the gate; nothing the client sends
# about its own address may count.
CURL_CASES = [
    pytest.param("client-ip", ("Authorization: Bearer {token}",), "", 200, id="bearer, listed client"),
    pytest.param("client-ip", (KEY,), "", 200, id="x-api-key, listed client"),
    pytest.param("client-ip", (), "?api_key={token}", 200, id="query, listed client"),
    pytest.param("client-ip", (KEY,), "?api_key={token}", 200, id="same token twice"),
    pytest.param("elsewhere", (KEY,), "", 403, id="unlisted client"),
    pytest.param("elsewhere", (), "?api_key={token}", 403, id="query, unlisted client"),
    pytest.param("elsewhere", (KEY, f"X-Forwarded-For: {ELSEWHERE}"), "", 403, id="X-Forwarded-For spoof"),
    pytest.param("elsewhere", (KEY, f"X-Real-IP: {ELSEWHERE}"), "", 403, id="X-Real-IP spoof"),
    pytest.param("elsewhere", (KEY, f"Forwarded: for={ELSEWHERE}"), "", 403, id="Forwarded spoof"),
    pytest.param(
        "elsewhere",
        (KEY, f"X-Forwarded-For: {ELSEWHERE}", f"X-Real-IP: {ELSEWHERE}"),
        "",
        403,
        id="both spoofs",
    ),
    pytest.param(
        "elsewhere",
        (KEY, f"X-Forwarded-For: {ELSEWHERE}, {CLIENT_IP}"),
        "",
        403,
        id="X-Forwarded-For chain spoof",
    ),
    pytest.param("domain", (KEY, f"Origin: http://{LISTED_DOMAIN}"), "", 200, id="listed Origin"),
    pytest.param("domain", (KEY, f"Referer: https://{LISTED_DOMAIN}/page"), "", 200, id="listed Referer"),
    pytest.param("domain", (KEY, "Origin: http://evil.test"), "", 403, id="unlisted Origin"),
    pytest.param(
        "domain",
        (KEY, f"Origin: http://{LISTED_DOMAIN}.evil.test"),
        "",
        403,
        id="look-alike Origin",
    ),
    pytest.param("domain", (KEY,), "", 403, id="domain-only token from a server"),
    pytest.param("domain", (KEY, "Origin: null"), "", 403, id="Origin null: no domain"),
    pytest.param("client-ip", (KEY, "Sec-Fetch-Mode: cors"), "", 403, id="IP-only token, browser signal"),
    pytest.param("client-ip", (KEY, "Authorization: Bearer {decoy}"), "", 403, id="decoy in bearer"),
    pytest.param("client-ip", (KEY,), "?api_key={decoy}", 403, id="decoy in query"),
    pytest.param("client-ip", (KEY, "X-API-Key: {decoy}"), "", 403, id="decoy in a repeated header"),
    pytest.param("client-ip", (), "?api_key={token}&api_key={decoy}", 403, id="decoy in a repeated query"),
    pytest.param(
        "client-ip",
        ("Authorization: Bearer {decoy}",),
        "?api.key={token}",
        403,
        id="decoy beside PHP's api.key",
    ),
    pytest.param(
        "client-ip",
        ("Authorization: Bearer {decoy}",),
        "?API_KEY={token}",
        403,
        id="decoy beside ASP.NET's API_KEY",
    ),
    pytest.param(None, (KEY,), "", 200, id="unknown token: unrestricted"),
    pytest.param(None, (), "", 401, id="no token"),
    pytest.param(
        "client-ip",
        (
            "X-Original-URI: /v1/hello?api_key={token}",
            "X-Forwarded-Uri: /v1/hello?api_key={token}",
            "X-Original-Method: GET",
            "X-Forwarded-Method: GET",
        ),
        "",
        401,
        id="forged forward-auth headers",
    ),
]


def run_case(
    proxy_url: str, store_url: str, restriction: str | None, headers: tuple[str, ...], query: str, status: int
) -> Reply:
    """One row of CURL_CASES through the proxy at `proxy_url`: fresh tokens, curl, the checks of
    `expect_reply`."""
    token, decoy = f"tok-gate-{uuid.uuid4().hex}", f"tok-decoy-{uuid.uuid4().hex}"
    if restriction is not None:
        for each in (token, decoy):
            put_token(store_url, each, RESTRICTIONS[restriction])
    sent = [header.format(token=token, decoy=decoy) for header in headers]
    target = "/v1/hello" + query.format(token=token, decoy=decoy)
    reply = curl(proxy_url + target, *sent)
    assert reply.status == status, reply
    expect_reply(reply, path=target)
    for name, values in reply.headers.items():
        assert not any(token in value or decoy in value for value in values), name
    return reply


def expect_error_cors(reply: Reply, origin: str) -> None:
    """The gate's 403 to a page on `origin`, as the snippets make it: readable there, with its
    `Access-Denied-Ref` exposed to the page's script."""
    assert reply.status == 403, reply
    expect_reply(reply)
    assert reply.header("access-control-allow-origin") == origin, reply
    assert reply.header("access-control-expose-headers") == "Access-Denied-Ref", reply
    assert "Origin" in (reply.header("vary") or ""), reply


def expect_reply(reply: Reply, *, path: str = "/v1/hello") -> None:
    """What a client must see for the reply's status, exactly: for a 200, the upstream's echo
    with the gate's headers (`path` as sent); otherwise the JSON error of docs/behaviour.md."""
    if reply.status == 200:
        seen = reply.json()
        assert isinstance(seen, dict)
        assert seen["path"] == path
        assert seen["headers"]["x-token-access"] == "allowed"
        assert len(seen["headers"]["x-token-fingerprint"]) == 10
        return
    assert reply.header("content-type") == "application/json", reply
    expected = {401: UNAUTHORIZED, 403: FORBIDDEN, 503: UNAVAILABLE}[reply.status]
    assert reply.json() == expected, reply
    if reply.status == 401:
        assert reply.header("www-authenticate") == "Bearer", reply


# (restriction, page host, API host, status): the page at http://<page>:PORT/ comes through the
# proxy's public route. With the same host its fetch() of /v1/hello is same-origin (Chromium
# sends Referer and Sec-Fetch-*); with another it is cross-origin: a tokenless preflight that the
# gate lets through to the app, then the call with Origin, its error readable thanks to the
# snippet's Access-Control-Allow-Origin on the gate's errors. The browser fixture maps these
# names to 127.0.0.1.
BROWSER_CASES = [
    pytest.param("domain", "app.test", "app.test", 200, id="listed site, same origin"),
    pytest.param("domain", "evil.test", "evil.test", 403, id="another site, same origin"),
    pytest.param("domain", "app.test", "api.test", 200, id="listed site, cross-origin"),
    pytest.param("domain", "evil.test", "api.test", 403, id="another site, cross-origin"),
    pytest.param("client-ip", "app.test", "app.test", 403, id="IP-only token from a browser"),
]


def fetch_in_browser(
    browser: Chromium, proxy: Foreground, store_url: str, restriction: str, page: str, api: str, status: int
) -> None:
    """One row of BROWSER_CASES: the page's script calls the API through `proxy`."""
    token = f"tok-gate-{uuid.uuid4().hex}"
    put_token(store_url, token, RESTRICTIONS[restriction])
    base = "" if api == page else proxy.url(api)
    result = browser.run_on_page(proxy.url(page) + "/", f"callApi({json.dumps(token)}, {json.dumps(base)})")
    assert result["status"] == status, result
    if status == 200:
        seen = json.loads(result["body"])
        assert seen["headers"]["x-token-access"] == "allowed"
        if api == page:
            assert seen["headers"]["referer"] == proxy.url(page) + "/"
        else:
            assert seen["headers"]["origin"] == proxy.url(page)
    else:
        assert json.loads(result["body"]) == FORBIDDEN


# --------------------------------------------------------------------------- checks for every proxy


def check_decision_reaches_the_app(
    proxy: Foreground, store_url: str, client_header: str, *also_forged: str
) -> None:
    """The app gets the gate's decision and the client's address in `client_header` (as the proxy
    names it), never what the client says (`X-Token-*`, and `also_forged`); the app still gets the
    token it authenticates with. Public routes carry no decision."""
    token = f"tok-gate-{uuid.uuid4().hex}"
    put_token(store_url, token, RESTRICTIONS["client-ip"])
    forged = ("X-Token-Access: allowed", "X-Token-Fingerprint: forged", *also_forged)

    reply = curl(proxy.url() + "/v1/hello", f"Authorization: Bearer {token}", *forged, method="POST")
    assert reply.status == 200, reply
    seen = reply.json()
    assert isinstance(seen, dict)
    assert seen["method"] == "POST"
    assert seen["headers"]["x-token-fingerprint"] not in ("forged", token)
    assert seen["headers"][client_header] == CLIENT_IP
    assert seen["headers"]["authorization"] == f"Bearer {token}"  # the app authenticates with it

    public = curl(proxy.url() + "/status", *forged).json()
    assert isinstance(public, dict)
    assert "x-token-access" not in public["headers"]
    assert "x-token-fingerprint" not in public["headers"]


def check_denial_ref_passes_through(
    proxy: Foreground, gate: Gate, store_url: str, forward_auth: tuple[str, ...]
) -> None:
    """The gate's 403 and its `Access-Denied-Ref` reach the client through `proxy`, CORS-readable
    by a page on another origin. `forward_auth`: the headers the proxy sends the gate (method,
    URI, client address), for the same request asked of the gate directly."""
    token = f"tok-gate-{uuid.uuid4().hex}"
    put_token(store_url, token, RESTRICTIONS["elsewhere"])
    direct = curl(gate.url() + "/check", f"X-API-Key: {token}", *forward_auth, source=PROXY_IP)
    assert direct.status == 403
    through = curl(proxy.url() + "/v1/hello", f"X-API-Key: {token}")
    assert through.status == 403
    expect_reply(through)
    assert "access-control-allow-origin" not in through.headers
    from_page = curl(proxy.url() + "/v1/hello", f"X-API-Key: {token}", "Origin: http://evil.test")
    expect_error_cors(from_page, "http://evil.test")
    sent, seen = direct.header("access-denied-ref"), through.header("access-denied-ref")
    assert sent and seen and len(seen) == len(sent)


def check_allowed_reply_keeps_the_apps_cors(proxy: Foreground, store_url: str) -> None:
    """Issue 23, hole 4, at the proxy: an allowed request from a page on another origin gets what
    the app answered (its CORS policy refuses that origin: no CORS header), never an
    `Access-Control-Allow-Origin` the snippet made up, whatever the token (an invented one is
    allowed by default); the gate's own refusal to that page stays readable there."""
    origin = "https://evil.example.net"
    open_token = f"tok-open-{uuid.uuid4().hex}"
    for token in (open_token, f"tok-invented-{uuid.uuid4().hex}"):
        if token == open_token:
            put_token(store_url, token, Restrictions())
        allowed = curl(proxy.url() + "/v1/hello", f"X-API-Key: {token}", f"Origin: {origin}")
        assert allowed.status == 200, allowed
        assert not [name for name in allowed.headers if name.startswith("access-control-")], allowed
    denied_token = f"tok-denied-{uuid.uuid4().hex}"
    put_token(store_url, denied_token, RESTRICTIONS["domain"])
    expect_error_cors(
        curl(proxy.url() + "/v1/hello", f"X-API-Key: {denied_token}", f"Origin: {origin}"), origin
    )


def check_unavailable_is_503(kind: type[Nginx | Caddy], upstream: Upstream, broken: str) -> None:
    """`broken`: "store down" (a gate whose store does not answer, nothing cached) or "gate down"
    (no gate at all). The client gets the gate's 503 JSON through a `kind` proxy, never the app."""
    dead = free_port()
    gate = None
    if broken == "store down":
        gate = Gate(kind.flavour, f"redis://127.0.0.1:{dead}/0")
        gate.start()
    proxy = kind(gate.port if gate is not None else dead, upstream.port)
    proxy.start()
    try:
        reply = curl(proxy.url() + "/v1/hello", "X-API-Key: any-token")
        assert reply.status == 503, reply
        expect_reply(reply)
    finally:
        proxy.cleanup()
        if gate is not None:
            gate.cleanup()
