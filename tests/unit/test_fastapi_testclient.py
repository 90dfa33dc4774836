"""TokenAccess through FastAPI's own `TestClient`, in the README's shape: the validator opened in
the app's `lifespan`, `access.install(app)`, a protected route and a public one.

`TestClient` runs the app, lifespan included, on an event loop of its own: the validator and the
memory:// store are created inside that lifespan, as a real app creates them at start-up.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from tests.unit.test_asgi import FORBIDDEN_BODY, LISTED_IP, OTHER_IP
from validator import Admin, Restrictions, Validator
from validator.web.fastapi import Access, TokenAccess

pytestmark = [pytest.mark.timeout(30), pytest.mark.promise("P-FASTAPI-SAME-ANSWERS")]

UNAUTHORIZED_BODY = b'{"error": "API token required."}'
UNAVAILABLE_BODY = b'{"error": "Access check unavailable. Try again later."}'
LISTED_ORIGIN = "https://app.example.com"


def build(url: str) -> FastAPI:
    """The README's app: one validator per app, opened and closed by the lifespan."""
    validator = Validator.from_url(url)
    access = TokenAccess(validator, trusted_proxies=["127.0.0.1"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if url.startswith("memory://"):
            admin = Admin(validator.store)
            await admin.put("ip-token", Restrictions(ip_enabled=True, ips=[LISTED_IP]))
            await admin.put("web-token", Restrictions(domain_enabled=True, domains=["app.example.com"]))
        async with validator:
            yield

    app = FastAPI(lifespan=lifespan)
    access.install(app)

    @app.get("/v1/hello")
    async def hello(checked: Access = Depends(access)) -> dict[str, Any]:  # noqa: B008
        assert checked.decision is not None
        return {"source": checked.decision.source.value if checked.decision.source else None}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    # TestClient's peer is made the trusted proxy 127.0.0.1 (its default, "testclient", is no
    # address), so back-end requests name their client with X-Forwarded-For, as behind an edge.
    with TestClient(build(f"memory://testclient-{uuid.uuid4()}"), client=("127.0.0.1", 50000)) as client:
        yield client


def test_a_listed_server_is_allowed(client: TestClient) -> None:
    response = client.get("/v1/hello", headers={"X-API-Key": "ip-token", "X-Forwarded-For": LISTED_IP})
    assert response.status_code == 200
    assert response.json() == {"source": "back_end"}


def test_a_listed_page_is_allowed(client: TestClient) -> None:
    response = client.get("/v1/hello", headers={"X-API-Key": "web-token", "Origin": LISTED_ORIGIN})
    assert response.status_code == 200
    assert response.json() == {"source": "front_end"}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-API-Key": "ip-token", "X-Forwarded-For": OTHER_IP}, id="unlisted server"),
        pytest.param({"X-API-Key": "web-token", "Origin": "https://evil.test"}, id="unlisted page"),
        pytest.param({"X-API-Key": "ip-token", "Origin": LISTED_ORIGIN}, id="IP-only token from a page"),
        pytest.param({"X-API-Key": "web-token", "Authorization": "Bearer other"}, id="decoy"),
    ],
)
def test_a_denial_is_the_exact_403(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/v1/hello", headers=headers)
    assert response.status_code == 403
    assert response.content == FORBIDDEN_BODY
    assert response.headers["content-type"] == "application/json"
    assert len(response.headers["access-denied-ref"]) == 32


def test_no_token_is_the_exact_401(client: TestClient) -> None:
    response = client.get("/v1/hello")
    assert response.status_code == 401
    assert response.content == UNAUTHORIZED_BODY
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_route_without_the_dependency_is_public(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_store_that_is_down_is_the_exact_503() -> None:
    # Nothing listens on port 1: the lifespan's start-up does not wait for it, every check fails closed.
    with TestClient(build("redis://127.0.0.1:1/0"), client=("127.0.0.1", 50000)) as client:
        response = client.get("/v1/hello", headers={"X-API-Key": "ip-token", "X-Forwarded-For": LISTED_IP})
    assert response.status_code == 503
    assert response.content == UNAVAILABLE_BODY


def test_the_openapi_document_names_the_token_schemes(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"TokenBearer", "TokenHeader", "TokenQuery"}
    assert "security" not in document["paths"]["/healthz"]["get"]
