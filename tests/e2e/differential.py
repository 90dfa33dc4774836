"""Real apps of other languages behind the real proxies, and the differential corpus run through them
(tests/e2e/test_differential.py).

The apps (tests/e2e/apps/): PHP's built-in server with one front-controller script, Express 4 under
Node, and a raw ASGI app under uvicorn whose router is as lenient as the most lenient mainstream
ones (`;params`, case, encoded slashes, trailing dots). Each answers with `X-Upstream-Echo`: JSON
saying how it routed the request (`route`, `protected`), the tokens it read the way its framework
reads them (`tokens`: query, header, bearer), and the gate's `X-Token-Fingerprint` and
`X-Token-Access` as it received them.

The corpus (tests/e2e/corpus/hostile.jsonl, one JSON object a line) holds hostile requests: `id`,
`method`, `target`, `headers` (raw lines; one starting with a space folds onto the previous one),
and optionally `version` (HTTP/1.1 unless given), `expect` ("protected", "refused", "public": what
every proxy x app must make of it), `why` (a note) and `known` (an open issue it fails under today:
the runner expects it to fail, not strictly). In `target` and `headers`, `{good}` is a token listed
for the client's address, `{stolen}` one listed only for another address, `{fp_good}` and
`{fp_stolen}` their fingerprints. Requests go over raw sockets, byte for byte as written (no client
normalises the path or the headers).

The invariant, for every row and pair: whenever the app handles the request as a protected route
with a token it knows, the gate checked that very token (the fingerprint the app received is that
token's) and allowed it because its rules allow it (only `{good}` may be used from here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tests.e2e.conftest import need
from tests.e2e.proxies import CLIENT_IP, PROXY_IP, Foreground

__all__ = [
    "APPS",
    "CORPUS",
    "ExpressApp",
    "PhpApp",
    "PythonApp",
    "RawReply",
    "Row",
    "load_corpus",
    "send_raw",
    "violations",
]

ROOT = Path(__file__).resolve().parents[2]
APPS_DIR = Path(__file__).resolve().parent / "apps"
CORPUS = Path(__file__).resolve().parent / "corpus" / "hostile.jsonl"
EXPECTATIONS = ("protected", "refused", "public")


class PhpApp(Foreground):
    """`php -S` (PHP's built-in server) with tests/e2e/apps/php/index.php routing every request."""

    what = "php"

    def start(self, timeout: float = 15.0) -> None:
        script = APPS_DIR / "php" / "index.php"
        command = [need("php"), "-S", f"{PROXY_IP}:{self.port}", "-t", str(script.parent), str(script)]
        # One process (no PHP_CLI_SERVER_WORKERS: its forked workers outlive a stopped parent).
        env = {name: value for name, value in os.environ.items() if name != "PHP_CLI_SERVER_WORKERS"}
        self._spawn(command, env)
        self._wait(timeout)


def npm_ci(folder: Path) -> None:
    """`npm ci` in `folder` unless its node_modules already is what package-lock.json says."""
    installed = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run(
        [need("npm"), "ci", "--no-audit", "--no-fund", "--loglevel", "error"],
        cwd=folder,
        check=True,
        timeout=300,
        capture_output=True,
    )


class ExpressApp(Foreground):
    """`node tests/e2e/apps/express/app.js PORT` (Express 4 from package-lock.json, `npm ci`)."""

    what = "express"

    def start(self, timeout: float = 15.0) -> None:
        folder = APPS_DIR / "express"
        npm_ci(folder)
        self._spawn([need("node"), str(folder / "app.js"), str(self.port)])
        self._wait(timeout)


class PythonApp(Foreground):
    """`uvicorn tests.e2e.apps.lenient:app` (the lenient router)."""

    what = "python"

    def start(self, timeout: float = 20.0) -> None:
        command = [
            sys.executable, "-m", "uvicorn", "tests.e2e.apps.lenient:app",
            "--host", PROXY_IP, "--port", str(self.port), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        self._spawn(command, {**os.environ, "PYTHONPATH": str(ROOT)})
        self._wait(timeout)


APPS: dict[str, type[Foreground]] = {"php": PhpApp, "express": ExpressApp, "python": PythonApp}


@dataclass(frozen=True)
class Row:
    id: str
    method: str
    target: str
    headers: tuple[str, ...]
    expect: str | None
    known: str | None
    version: str = "HTTP/1.1"


def load_corpus(path: Path = CORPUS) -> list[Row]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        data = json.loads(line)
        unknown = set(data) - {"id", "method", "target", "headers", "expect", "known", "why", "version"}
        if unknown or data.get("expect", "public") not in EXPECTATIONS:
            raise ValueError(f"{path.name}:{number}: unknown fields {unknown} or expect")
        rows.append(
            Row(
                data["id"],
                data["method"],
                data["target"],
                tuple(data["headers"]),
                data.get("expect"),
                data.get("known"),
                data.get("version", "HTTP/1.1"),
            )
        )
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path.name}: two rows share an id")
    return rows


@dataclass(frozen=True)
class RawReply:
    status: int
    headers: dict[str, list[str]]  # lower-cased names
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    def echo(self) -> dict[str, Any] | None:
        """What the app said it received (None: the app did not answer this request)."""
        text = self.header("x-upstream-echo")
        if text is None:
            return None
        data = json.loads(text)
        assert isinstance(data, dict)
        return data


def send_raw(
    port: int,
    method: str,
    target: str,
    headers: tuple[str, ...],
    timeout: float = 10.0,
    version: str = "HTTP/1.1",
) -> RawReply:
    """One request, byte for byte as given, from CLIENT_IP to PROXY_IP:`port`;
    `Connection: close`, so the reply ends when the proxy closes."""
    lines = [f"{method} {target} {version}", "Host: api.test", *headers, "Connection: close", "", ""]
    request = "\r\n".join(lines).encode("latin-1")
    with socket.create_connection((PROXY_IP, port), timeout=timeout, source_address=(CLIENT_IP, 0)) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return parse_reply(b"".join(chunks), head_only=method == "HEAD")


def parse_reply(data: bytes, *, head_only: bool = False) -> RawReply:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if head_only:
        body = b""
    elif "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        body = _unchunk(body)
    return RawReply(status, headers, body)


def _unchunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2 :]
    return b"".join(out)


def _strings(value: object) -> list[str]:
    """Every string in what a framework made of a parameter (qs and PHP make lists and maps)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    return []


def violations(row: Row, reply: RawReply, fingerprints: dict[str, str], allowed: set[str]) -> list[str]:
    """What is wrong with `reply` to `row` (empty: nothing). `fingerprints`: each token the apps
    know, by value; `allowed`: those whose rules allow them from CLIENT_IP."""
    echo = reply.echo()
    wrong: list[str] = []
    if echo is not None and echo.get("protected"):
        tokens = echo.get("tokens") or {}
        for source, value in tokens.items():
            for token in _strings(value):
                if token not in fingerprints:
                    continue  # no token the app knows: it authenticates nobody
                which = "good" if token in allowed else "stolen"
                if echo.get("fingerprint") != fingerprints[token]:
                    wrong.append(
                        f"the app read the {which} token from its {source} but got fingerprint "
                        f"{echo.get('fingerprint')!r} (X-Token-Access {echo.get('access')!r}), "
                        f"not {fingerprints[token]!r}: the gate did not check that token"
                    )
                if token not in allowed:
                    wrong.append(f"the {which} token, read from the {source}, reached a protected route")
                elif echo.get("access") != "allowed":
                    wrong.append(f"protected route handled with X-Token-Access {echo.get('access')!r}")
    if row.expect == "protected":
        if (
            reply.status != 200
            or echo is None
            or not echo.get("protected")
            or echo.get("access") != "allowed"
        ):
            wrong.append(f"expected the app's protected route, allowed: {reply.status} {echo}")
    elif row.expect == "refused":
        if reply.status not in (401, 403) or echo is not None:
            wrong.append(f"expected the gate's refusal: {reply.status} {echo}")
    elif row.expect == "public" and (
        echo is None
        or echo.get("route") != "status"
        or echo.get("access") is not None
        or echo.get("fingerprint") is not None
    ):
        wrong.append(f"expected the public route, without a decision: {reply.status} {echo}")
    return wrong


def check_every_spelling_is_checked(port: int, stolen: str) -> None:
    """Through the proxy on `port` (the snippet in front of tests/e2e/proxies.py's `Upstream`, which
    echoes the path it got): every spelling of a protected path goes to the gate, which refuses
    `stolen` (a token listed for another address), and so does a path nobody listed; a public path
    spelled otherwise reaches the app as listed (issue 23, hole 2)."""
    for target in ("/V1/hello", "/v1;x/hello", "/v1%2Fhello", "//v1//hello", "/v1/hello.", "/other"):
        reply = send_raw(port, "GET", target, (f"X-API-Key: {stolen}",))
        assert reply.status == 403, (target, reply)
    assert send_raw(port, "GET", "/other", ()).status == 401
    for target in ("/status", "//status", "/x/../status", "/v1/../status", "/%73tatus", "/v1/%2e%2e/status"):
        reply = send_raw(port, "GET", target + "?q=1", (f"X-API-Key: {stolen}",))
        assert reply.status == 200, (target, reply)
        seen = json.loads(reply.body)
        # The listed path: Caddy keeps a spelling that only percent-encodes its letters (`/%73tatus`).
        assert unquote(seen["path"]) == "/status?q=1", (target, seen)
        assert "x-token-access" not in seen["headers"], (target, seen)
