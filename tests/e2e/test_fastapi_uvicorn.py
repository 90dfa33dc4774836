"""FastAPI under a real uvicorn process, a real redis-server behind it, curl in front.

Two apps from one module: `per_route` protects one route with the `TokenAccess` dependency,
`exempting` puts `TokenAccessMiddleware` in front of everything but `/healthz`, the docs and a
`@public` route. curl sends exactly the paths and headers given (`--path-as-is`), from 127.0.0.1,
a trusted proxy here, so `X-Forwarded-For` presents public addresses.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import SECRET, need, seed
from tests.processes import stop_process, wait_answering
from tests.redis_servers import RedisProcess, free_port
from validator import Restrictions

pytestmark = [pytest.mark.timeout(120), pytest.mark.promise("P-FASTAPI-SAME-ANSWERS")]

FORBIDDEN = b'{"error": "Access denied. You don\'t have permission to access this."}'
UNAUTHORIZED = b'{"error": "API token required."}'
UNAVAILABLE = b'{"error": "Access check unavailable. Try again later."}'
LISTED_IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"

SERVICE = textwrap.dedent(
    """
    import os
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager
    from typing import Annotated

    from fastapi import Depends, FastAPI

    from validator import Validator
    from validator.web import TokenAccessMiddleware, public
    from validator.web.fastapi import Access, TokenAccess

    STORE = os.environ["SERVICE_STORE_URL"]

    # ---- per route: the dependency
    validator = Validator.from_url(STORE, timeout=0.3, connect_timeout=0.3)
    access = TokenAccess(validator, trusted_proxies=["127.0.0.1"])


    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with validator:
            yield


    per_route = FastAPI(lifespan=lifespan)
    access.install(per_route)


    @per_route.get("/v1/hello")
    async def hello(checked: Annotated[Access, Depends(access)]) -> dict[str, object]:
        decision = checked.decision
        assert decision is not None
        return {"reason": decision.reason.value, "token_length": len(checked.token or "")}


    @per_route.get("/healthz")
    async def per_route_health() -> dict[str, str]:
        return {"status": "ok"}


    # ---- everything checked but what is exempt: the middleware
    exempting = FastAPI()
    exempting.add_middleware(
        TokenAccessMiddleware,
        validator=Validator.from_url(STORE),
        trusted_proxies=["127.0.0.1"],
        exempt=["/healthz", "/docs", "/openapi.json"],
    )


    @exempting.post("/{name}")
    async def protected(name: str) -> dict[str, str]:
        return {"protected": name}


    @exempting.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}


    @exempting.get("/v1/status")
    @public
    async def status() -> dict[str, str]:
        return {"status": "public"}


    @exempting.get("/v1/hello")
    async def exempting_hello() -> dict[str, str]:
        return {"hello": "world"}
    """
)


class Service:
    """`uvicorn service:<app>` on a free loopback port, ready when `/healthz` answers 200."""

    def __init__(self, app: str, store_url: str) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="tav-fastapi-"))
        (self.folder / "fastapi_service.py").write_text(SERVICE)
        self.log = self.folder / "uvicorn.log"
        env = {**os.environ, "VALIDATOR_SECRET": SECRET, "SERVICE_STORE_URL": store_url}
        command = [
            sys.executable, "-m", "uvicorn", f"fastapi_service:{app}",
            "--app-dir", str(self.folder), "--host", "127.0.0.1", "--port", str(self.port),
            "--no-proxy-headers", "--lifespan", "on", "--no-access-log",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 20.0) -> None:
        wait_answering(self.url + "/healthz", self.process, "uvicorn", self.output, timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


@contextlib.contextmanager
def serving(app: str, store_url: str) -> Iterator[Service]:
    service = Service(app, store_url)
    try:
        service.wait()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def per_route(redis_server: RedisProcess) -> Iterator[Service]:
    with serving("per_route", redis_server.url) as service:
        yield service


@pytest.fixture(scope="module")
def exempting(redis_server: RedisProcess) -> Iterator[Service]:
    with serving("exempting", redis_server.url) as service:
        yield service


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def curl(url: str, *headers: str, method: str = "GET") -> Reply:
    """One request, path sent as is: status, headers (lower-case names) and body."""
    # HEAD with -I: curl would otherwise wait for the body the Content-Length announces.
    verb = ["-I"] if method == "HEAD" else ["-X", method]
    args = [need("curl"), "-sS", "--path-as-is", "--max-time", "10", *verb, "-D", "-", "-o", "-"]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run([*args, url], capture_output=True, timeout=15, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Reply(status, {k.lower(): v for k, v in fields.items()}, body)


def token(redis_server: RedisProcess, restrictions: Restrictions) -> str:
    value = f"tok-e2e-fastapi-{uuid.uuid4().hex}"
    seed(redis_server.url, value, restrictions)
    return value


# --------------------------------------------------------------------------- the dependency

I_ONLY = Restrictions(ip_enabled=True, ips=[LISTED_IP])
D_ONLY = Restrictions(domain_enabled=True, domains=["app.test"])


def test_dependency_allows_and_denies_as_the_decision_table(
    per_route: Service, redis_server: RedisProcess
) -> None:
    ip_token = token(redis_server, I_ONLY)
    domain_token = token(redis_server, D_ONLY)
    allowed = curl(per_route.url + "/v1/hello", f"X-API-Key: {ip_token}", f"X-Forwarded-For: {LISTED_IP}")
    assert (allowed.status, json.loads(allowed.body)) == (
        200,
        {"reason": "ip_listed", "token_length": len(ip_token)},
    )
    for headers in (
        [f"X-API-Key: {ip_token}", f"X-Forwarded-For: {OTHER_IP}"],
        [f"Authorization: Bearer {domain_token}", f"X-Forwarded-For: {LISTED_IP}"],
        [f"X-API-Key: {domain_token}", "Origin: https://evil.test"],
        [f"X-API-Key: {ip_token}", f"Authorization: Bearer {domain_token}", f"X-Forwarded-For: {LISTED_IP}"],
    ):
        denied = curl(per_route.url + "/v1/hello", *headers)
        assert (denied.status, denied.body) == (403, FORBIDDEN), headers
        assert denied.headers["content-type"] == "application/json"
    page = curl(per_route.url + "/v1/hello", f"X-API-Key: {domain_token}", "Origin: https://app.test")
    assert page.status == 200


def test_dependency_401_and_the_public_route(per_route: Service) -> None:
    missing = curl(per_route.url + "/v1/hello")
    assert (missing.status, missing.body) == (401, UNAUTHORIZED)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert curl(per_route.url + "/healthz").status == 200


def test_dependency_openapi_schemes(per_route: Service) -> None:
    document = json.loads(curl(per_route.url + "/openapi.json").body)
    assert set(document["components"]["securitySchemes"]) == {"TokenBearer", "TokenHeader", "TokenQuery"}
    assert len(document["paths"]["/v1/hello"]["get"]["security"]) == 3
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_dependency_503_when_the_store_is_gone() -> None:
    server = RedisProcess()
    server.start()
    try:
        with serving("per_route", server.url) as service:
            seed(server.url, "tok-e2e-open", Restrictions())  # also marks the store (init)
            first = curl(service.url + "/v1/hello", "X-API-Key: tok-e2e-open")
            server.stop()
            down = curl(service.url + "/v1/hello", "X-API-Key: tok-other-never-seen")
    finally:
        server.cleanup()
    assert first.status == 200
    assert (down.status, down.body) == (503, UNAVAILABLE)


# --------------------------------------------------------------------------- exemptions

# (method, path as sent, status): only the exact, public routes answer without a token.
EXEMPTIONS = [
    pytest.param("GET", "/healthz", 200, id="listed"),
    pytest.param("HEAD", "/healthz", 401, id="listed, HEAD (a FastAPI GET route takes no HEAD)"),
    pytest.param("GET", "/healthz?x=1", 200, id="listed, with a query"),
    pytest.param("GET", "/docs", 200, id="docs"),
    pytest.param("GET", "/openapi.json", 200, id="openapi.json"),
    pytest.param("GET", "/v1/status", 200, id="marked public"),
    pytest.param("POST", "/healthz", 401, id="POST falls through to /{name}"),
    pytest.param("POST", "/openapi.json", 401, id="POST to the docs falls through to /{name}"),
    pytest.param("GET", "/healthz/", 401, id="trailing slash"),
    pytest.param("GET", "//healthz", 401, id="double slash"),
    pytest.param("GET", "/HEALTHZ", 401, id="upper case"),
    pytest.param("GET", "/healthz%2F..", 401, id="encoded slash and dots"),
    pytest.param("GET", "/healthz/../v1/hello", 401, id="dot segments"),
    pytest.param("GET", "/v1/hello", 401, id="not exempt"),
]


@pytest.mark.parametrize(("method", "path", "status"), EXEMPTIONS)
def test_exemptions_under_uvicorn(exempting: Service, method: str, path: str, status: int) -> None:
    reply = curl(exempting.url + path, method=method)
    assert reply.status == status
    if status == 401 and method != "HEAD":
        assert reply.body == UNAUTHORIZED


def test_exempting_app_still_checks_tokens(exempting: Service, redis_server: RedisProcess) -> None:
    ip_token = token(redis_server, I_ONLY)
    url = exempting.url + "/v1/hello"
    assert curl(url, f"X-API-Key: {ip_token}", f"X-Forwarded-For: {LISTED_IP}").status == 200
    denied = curl(url, f"X-API-Key: {ip_token}", f"X-Forwarded-For: {OTHER_IP}")
    assert (denied.status, denied.body) == (403, FORBIDDEN)
    protected = curl(
        exempting.url + "/healthz", f"X-API-Key: {ip_token}", f"X-Forwarded-For: {OTHER_IP}", method="POST"
    )
    assert (protected.status, protected.body) == (403, FORBIDDEN)
