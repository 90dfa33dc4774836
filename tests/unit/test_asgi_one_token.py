"""docs/behaviour.md "One token per request" and "Tokens are visible ASCII", at the middleware.

Every configured token source is read: a request whose sources carry different tokens is refused
(a decoy beside a stolen token), and the app sees exactly the token that was checked. A token
with a byte outside `!`..`~`, or longer than `max_token_length`, is refused without a look-up.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.unit.test_asgi import FORBIDDEN_BODY, LISTED_IP, OTHER_IP, Headers, Recorder, call
from validator import Admin, Reason, Restrictions, Validator
from validator.errors import ConfigurationError
from validator.web.middleware import TokenAccessMiddleware

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.promise("P-ONE-TOKEN"),
    pytest.mark.promise("P-VISIBLE-ASCII"),
]

# "i" is restricted to servers at LISTED_IP; "open" is unrestricted; anything else is unknown
# (allowed: the validator's default), which is what makes a decoy dangerous.
STOLEN = "i"


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    async with Validator.from_url(f"memory://one-token-{uuid.uuid4()}") as validator:
        admin = Admin(validator.store)
        await admin.put(STOLEN, Restrictions(ip_enabled=True, ips=[LISTED_IP]))
        await admin.put("open", Restrictions())
        yield validator


@pytest.fixture
def app() -> Recorder:
    return Recorder()


@pytest.fixture
def middleware(app: Recorder, validator: Validator) -> TokenAccessMiddleware:
    return TokenAccessMiddleware(app, validator=validator)


def bearer(token: bytes) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + token)


def api_key(token: bytes) -> tuple[bytes, bytes]:
    return (b"x-api-key", token)


# --------------------------------------------------------------------------- one token per request


async def test_stolen_token_alone_is_denied_from_an_unlisted_address(
    middleware: TokenAccessMiddleware,
) -> None:
    reply = await call(middleware, [api_key(b"i")], client=(OTHER_IP, 1))
    assert (reply.status, reply.body) == (403, FORBIDDEN_BODY)


# Two sources (or one source twice) carrying different tokens: the app might use either.
DECOYS = [
    pytest.param([api_key(b"i"), bearer(b"x")], b"", id="issue 12 item 4: stolen key plus a bearer decoy"),
    pytest.param([bearer(b"i"), api_key(b"x")], b"", id="stolen bearer plus a key decoy"),
    pytest.param([api_key(b"i")], b"api_key=x", id="stolen key plus a query decoy"),
    pytest.param([bearer(b"x")], b"api_key=i", id="stolen query token plus a bearer decoy"),
    pytest.param([bearer(b"i"), api_key(b"x")], b"api_key=i", id="three sources, one differs"),
    pytest.param([bearer(b"i"), api_key(b"i")], b"api_key=x", id="three sources, the query differs"),
    pytest.param([bearer(b"i"), bearer(b"x")], b"", id="two Authorization headers"),
    pytest.param([api_key(b"i"), api_key(b"x")], b"", id="two X-API-Key headers"),
    pytest.param([], b"api_key=i&api_key=x", id="two query values"),
    pytest.param([], b"api_key=i&api%5Fkey=x", id="two query values, one name encoded"),
    pytest.param([api_key(b"i")], b"api_key=i%20", id="query differs only after decoding"),
    pytest.param([api_key(b"i")], b"api_key=I", id="tokens are case-sensitive"),
    pytest.param([(b"authorization", b"bearer x"), api_key(b"i")], b"", id="lower-case bearer scheme"),
    pytest.param([(b"authorization", b"Bearer\tx"), api_key(b"i")], b"", id="Bearer<TAB>, as apps read it"),
    pytest.param([(b"authorization", b"bearer\x0bx"), api_key(b"i")], b"", id="Bearer<VT>"),
]


@pytest.mark.parametrize(("headers", "query"), DECOYS)
async def test_disagreeing_token_sources_are_denied(
    app: Recorder, middleware: TokenAccessMiddleware, headers: Headers, query: bytes
) -> None:
    reply = await call(middleware, headers, query=query, client=(OTHER_IP, 1))
    assert (reply.status, reply.body, app.scopes) == (403, FORBIDDEN_BODY, [])
    assert reply.header(b"content-type") == b"application/json"


async def test_disagreeing_sources_are_denied_even_for_tokens_that_would_pass(
    app: Recorder, middleware: TokenAccessMiddleware
) -> None:
    reply = await call(middleware, [bearer(b"open"), api_key(b"i")], client=(LISTED_IP, 1))
    assert (reply.status, app.scopes) == (403, [])


# The same token in several places is one token: the app sees it, whatever it reads.
AGREEING = [
    pytest.param([bearer(b"i"), api_key(b"i")], b"", id="bearer and key"),
    pytest.param([api_key(b"i")], b"api_key=i", id="key and query"),
    pytest.param([bearer(b"i"), api_key(b"i")], b"api_key=i", id="all three"),
    pytest.param([api_key(b"i")], b"api_key=%69", id="query percent-encoded, compared decoded"),
    pytest.param([api_key(b"i")], b"api%5fkey=i", id="query name percent-encoded"),
    pytest.param([bearer(b"i"), bearer(b"i")], b"", id="Authorization twice, same value"),
    pytest.param([(b"authorization", b"Bearer   i  "), api_key(b"i")], b"", id="whitespace around a header"),
    pytest.param([(b"authorization", b"Basic dTpw"), api_key(b"i")], b"", id="Basic is no bearer token"),
    pytest.param([bearer(b""), api_key(b"i")], b"api_key=", id="empty sources hold no token"),
]


@pytest.mark.parametrize(("headers", "query"), AGREEING)
async def test_agreeing_token_sources_are_one_token(
    middleware: TokenAccessMiddleware, headers: Headers, query: bytes
) -> None:
    reply = await call(middleware, headers, query=query, client=(LISTED_IP, 1))
    assert reply.status == 200
    assert reply.scope["state"]["api_token"] == "i"
    assert reply.scope["state"]["token_access"].reason is Reason.IP_LISTED


# Sources left out of `token_sources` are not the middleware's: they neither count nor conflict.
SELECTED = [
    pytest.param(("bearer",), "i", id="bearer only"),
    pytest.param(("header",), "open", id="header only"),
    pytest.param(("query",), "x", id="query only"),
]


@pytest.mark.parametrize(("sources", "checked"), SELECTED)
async def test_only_configured_sources_are_read(
    app: Recorder, validator: Validator, sources: Any, checked: str
) -> None:
    middleware = TokenAccessMiddleware(app, validator=validator, token_sources=sources)
    reply = await call(
        middleware, [bearer(b"i"), api_key(b"open")], query=b"api_key=x", client=(LISTED_IP, 1)
    )
    assert (reply.status, reply.scope["state"]["api_token"]) == (200, checked)


async def test_starlette_reads_the_checked_token_from_request_state(validator: Validator) -> None:
    async def whoami(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.state.api_token)

    app = TokenAccessMiddleware(Starlette(routes=[Route("/v1/me", whoami)]), validator=validator)
    transport = httpx.ASGITransport(app=app, client=(LISTED_IP, 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        agreeing = await client.get("/v1/me?api_key=%69", headers={"X-API-Key": "i"})
        decoy = await client.get("/v1/me", headers={"X-API-Key": "i", "Authorization": "Bearer x"})
    assert (agreeing.status_code, agreeing.text) == (200, "i")
    assert decoy.status_code == 403


# --------------------------------------------------------------------------- visible ASCII tokens

# Never issued, so refused (403) before any look-up: previously each was an unknown token,
# allowed by default, and a token stored through the admin side (UTF-8) was never matched.
MALFORMED = [
    pytest.param([], b"api_key=t%C3%B6k", id="issue 12 item 7: UTF-8 in the query"),
    pytest.param([api_key(b"t\xc3\xb6k")], b"", id="UTF-8 bytes in a header"),
    pytest.param([api_key(b"t\xf6k")], b"", id="latin-1 byte in a header"),
    pytest.param([bearer(b"a b")], b"", id="space inside a bearer token"),
    pytest.param([bearer(b"i extra")], b"", id="bearer with a second word"),
    pytest.param([], b"api_key=a+b", id="query plus decodes to a space"),
    pytest.param([], b"api_key=%20i", id="query value with a leading space"),
    pytest.param([], b"api_key=i%00", id="NUL"),
    pytest.param([], b"api_key=i%7F", id="DEL"),
    pytest.param([api_key(b"i\x0bj")], b"", id="vertical tab inside a header value"),
    pytest.param([api_key(b"x" * 513)], b"", id="one byte over max_token_length"),
]


@pytest.mark.parametrize(("headers", "query"), MALFORMED)
async def test_malformed_token_is_denied_without_a_look_up(
    app: Recorder, validator: Validator, middleware: TokenAccessMiddleware, headers: Headers, query: bytes
) -> None:
    reply = await call(middleware, headers, query=query, client=(LISTED_IP, 1))
    assert (reply.status, reply.body, app.scopes) == (403, FORBIDDEN_BODY, [])
    assert (sum(validator.stats.read_latency_counts), len(validator.cache)) == (0, 0)


async def test_visible_ascii_token_of_max_length_is_checked(middleware: TokenAccessMiddleware) -> None:
    token = ("!~" * 256).encode()
    reply = await call(middleware, [api_key(token)], client=(OTHER_IP, 1))
    assert (reply.status, reply.scope["state"]["token_access"].reason) == (200, Reason.UNKNOWN_TOKEN)


async def test_max_token_length_follows_the_validator(app: Recorder) -> None:
    async with Validator.from_url(f"memory://one-token-{uuid.uuid4()}", max_token_length=8) as validator:
        middleware = TokenAccessMiddleware(app, validator=validator)
        assert (await call(middleware, [api_key(b"12345678")])).status == 200
        assert (await call(middleware, [api_key(b"123456789")])).status == 403


@pytest.mark.parametrize("length", [0, 4097])
def test_max_token_length_out_of_range_is_a_configuration_error(app: Recorder, length: int) -> None:
    validator = Validator.from_url("memory://")
    with pytest.raises(ConfigurationError, match="max_token_length"):
        TokenAccessMiddleware(app, validator=validator, max_token_length=length)
