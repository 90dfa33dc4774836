"""Issue 12 item 13: `python -m validator.web.demo --access-log` under a real uvicorn never writes a
token sent in the query in clear, while the requests that carried it were served. Issue 23: nor
does nginx's own access log with docs/deploying/nginx.conf."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import running
from tests.e2e.proxies import CLIENT_IP, PROXY_IP, Nginx, Upstream, gate_on
from tests.redis_servers import RedisProcess

pytestmark = [pytest.mark.timeout(60), pytest.mark.promise("P-TOKENS-NEVER-IN-CLEAR")]


def test_access_log_never_holds_a_query_token() -> None:
    # An unknown token is allowed (the validator's default), so each request is served; the
    # token is fresh, so it can appear in the demo's output only through a request line.
    token = f"tok-e2e-{uuid.uuid4().hex}"
    queries = [f"api_key={token}", f"a=1&api_key={token}&b=2", f"api%5Fkey={token}"]
    with running("--access-log") as demo:
        statuses = [httpx.get(f"{demo.url()}/v1/hello?{query}", timeout=10).status_code for query in queries]
        expected = [
            '"GET /v1/hello?api_key=<redacted> HTTP/1.1" 200',
            '"GET /v1/hello?a=1&api_key=<redacted>&b=2 HTTP/1.1" 200',
            '"GET /v1/hello?api%5Fkey=<redacted> HTTP/1.1" 200',
        ]
        # uvicorn logs (and its handler flushes) the line before it writes the status line, so
        # a received response has its line in the file already.
        output = demo.output()
    assert statuses == [200, 200, 200]
    for line in expected:
        assert line in output, output
    assert token not in output


# --------------------------------------------------------------------------- nginx's own access log

# Every spelling the gate reads as its token parameter, and those app frameworks map onto it
# (issue 23, hole 3: PHP's mangling, Rails/qs brackets), besides a decoy header.
TOKEN_QUERIES = [
    "api_key={t}",
    "a=1&api_key={t}&b=2",
    "api%5Fkey={t}",
    "%61pi_key={t}",
    "API_KEY={t}",
    "api.key={t}",
    "api+key={t}",
    "api[key={t}",
    "api%80key={t}",
    "api_key[]={t}",
    "a=1;api_key={t}",
    "api_key=decoy&api_key={t}",
    "access_token={t}",
]


@pytest.fixture(scope="module")
def nginx_site(redis_server: RedisProcess) -> Iterator[Nginx]:
    with Upstream() as app, gate_on("nginx", redis_server.url) as gate, Nginx(gate.port, app.port) as proxy:
        yield proxy


def _log_lines(nginx: Nginx, count: int) -> list[str]:
    """The access log once it holds `count` lines (nginx writes a line as a request ends)."""
    deadline = time.monotonic() + 20
    while True:
        lines = nginx.access_log.read_text().splitlines() if nginx.access_log.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _raw(nginx: Nginx, target: str, *headers: str) -> bytes:
    """One request sent as written (no client's URL handling in between) from CLIENT_IP: the
    status line of the reply."""
    with socket.create_connection((PROXY_IP, nginx.port), timeout=10, source_address=(CLIENT_IP, 0)) as sock:
        lines = [f"GET {target} HTTP/1.1", "Host: app.test", "Connection: close", *headers, "", ""]
        sock.sendall("\r\n".join(lines).encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply.partition(b"\r\n")[0]


def test_nginx_access_log_never_holds_a_query_token(nginx_site: Nginx) -> None:
    """docs/deploying/nginx.conf's own access log: a token in the query (any spelling, in the
    request line or the Referer, origin-form or absolute-form) is never written; a query
    without one is written as it came."""
    token = f"tok-e2e-{uuid.uuid4().hex}"
    before = len(_log_lines(nginx_site, 0))
    for query in TOKEN_QUERIES:
        assert _raw(nginx_site, f"/v1/hello?{query.format(t=token)}").startswith(b"HTTP/1.1 ")
    _raw(nginx_site, "/v1/hello?page=2", f"Referer: https://app.test/page?x=1&api_key={token}")
    _raw(nginx_site, "/v1/hello?sort=name&page=2")
    _raw(nginx_site, f"http://app.test/v1/hello?api_key={token}")  # absolute-form
    sent = len(TOKEN_QUERIES) + 3
    lines = _log_lines(nginx_site, before + sent)[before:]
    assert len(lines) == sent, lines
    assert all(token not in line for line in lines), [line for line in lines if token in line]
    assert all('"GET /v1/hello?<redacted> HTTP/1.1"' in line for line in lines[: len(TOKEN_QUERIES)]), lines
    assert '"GET /v1/hello?page=2 HTTP/1.1"' in lines[len(TOKEN_QUERIES)]
    assert '"https://app.test/page?<redacted>"' in lines[len(TOKEN_QUERIES)]
    assert '"GET /v1/hello?sort=name&page=2 HTTP/1.1"' in lines[len(TOKEN_QUERIES) + 1]
    assert "?<redacted> HTTP/1.1" in lines[-1]
