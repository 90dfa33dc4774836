"""Hostile requests: nothing raises, nothing is wrongly allowed.

The token "di" allows pages on app.example.com and servers on 203.0.113.7; unknown tokens are
denied; 10.0.0.0/8 is a trusted proxy. Every request here tries to pass for one of those (or
to break the middleware) and must get a 401 or 403 without the app ever seeing it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_asgi import Headers, Recorder, Reply, call
from validator import Admin, Restrictions, Validator
from validator.web.middleware import TokenAccessMiddleware

pytestmark = [pytest.mark.promise("P-NEVER-500"), pytest.mark.promise("P-NO-UNHANDLED-ERROR")]

RESTRICTIONS = Restrictions(
    domain_enabled=True, ip_enabled=True, domains=["app.example.com"], ips=["203.0.113.7"]
)
TOKEN = (b"x-api-key", b"di")
LISTED_ORIGIN = b"https://app.example.com"
UNTRUSTED = ("198.51.100.9", 4000)
PROXY = ("10.0.0.2", 4000)
KIB64 = 64 * 1024


async def hostile_validator(name: str) -> Validator:
    validator = Validator.from_url(f"memory://{name}", unknown_token="deny")
    await Admin(validator.store).put("di", RESTRICTIONS)
    return validator


def middleware(app: Recorder, validator: Validator, **settings: Any) -> TokenAccessMiddleware:
    return TokenAccessMiddleware(
        app, validator=validator, trusted_proxies=["10.0.0.0/8"], cors=True, **settings
    )


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    validator = await hostile_validator(f"asgi-hostile-{uuid.uuid4()}")
    yield validator
    await validator.close()


LISTED_PEER = ("203.0.113.7", 1)
ORIGIN, REFERER, XFF = b"origin", b"referer", b"x-forwarded-for"
EVIL = b"https://evil.test"


async def refused(
    validator: Validator, headers: Headers, *, query: bytes = b"", peer: Any = UNTRUSTED
) -> int:
    """The status of the request, after checking that the app never saw it."""
    app = Recorder()
    reply = await call(middleware(app, validator), headers, query=query, client=peer)
    assert app.scopes == []
    assert reply.body.startswith(b'{"error": ')
    assert reply.status is not None
    return reply.status


# Browser signals that try to pass for a page on app.example.com. All 403.
FRONT_END_GAMES = [
    pytest.param([(ORIGIN, LISTED_ORIGIN), (ORIGIN, EVIL)], id="two origins"),
    pytest.param([(ORIGIN, LISTED_ORIGIN), (ORIGIN, LISTED_ORIGIN)], id="same origin twice"),
    pytest.param([(ORIGIN, b"https://app.example.com, https://evil.test")], id="origin list, comma"),
    pytest.param([(ORIGIN, b"https://evil.test https://app.example.com")], id="origin list, space"),
    pytest.param([(ORIGIN, b"null")], id="origin null"),
    pytest.param([(ORIGIN, b"https://app.example.com@evil.test")], id="origin userinfo"),
    pytest.param([(ORIGIN, b"https://app.example.com.evil.test")], id="look-alike suffix"),
    pytest.param([(ORIGIN, b"https://evil-app.example.com.test")], id="look-alike prefix"),
    pytest.param([(ORIGIN, "https://app.\u0435xample.com".encode())], id="cyrillic e, utf-8"),
    pytest.param([(ORIGIN, b"https://app.example.com\x00.evil.test")], id="origin with NUL"),
    pytest.param([(ORIGIN, b"https://app.example.com\xff")], id="origin non-utf-8"),
    pytest.param([(ORIGIN, b"https://" + b"a" * KIB64)], id="origin 64 KiB"),
    pytest.param([(ORIGIN, b"https://app.example.com" + b"/" * KIB64)], id="origin 64 KiB path"),
    pytest.param([(REFERER, b"https://app.example.com@evil.test/")], id="referer userinfo"),
    pytest.param([(REFERER, b"https://user:app.example.com@evil.test/")], id="referer password"),
    pytest.param([(REFERER, b"https://evil.test\\@app.example.com/")], id="referer backslash"),
    pytest.param([(REFERER, b"https://evil.test#@app.example.com/")], id="referer fragment"),
    pytest.param([(REFERER, b"https://evil.test/?next=https://app.example.com/")], id="referer query"),
    pytest.param([(REFERER, b"https://app.example.com/" + b"a" * KIB64)], id="referer 64 KiB"),
    pytest.param([(REFERER, b"\xc3\x28\xff\xfe")], id="referer non-utf-8"),
    pytest.param([(REFERER, EVIL + b"/"), (REFERER, b"https://app.example.com/")], id="two referers"),
]


@pytest.mark.parametrize("headers", FRONT_END_GAMES)
async def test_front_end_games(validator: Validator, headers: Headers) -> None:
    assert await refused(validator, [TOKEN, *headers]) == 403


# Back-end requests that try to pass for 203.0.113.7 (10.0.0.2 is a trusted proxy). All 403.
ADDRESS_GAMES = [
    pytest.param([(XFF, b"203.0.113.7")], UNTRUSTED, id="spoofed XFF, untrusted peer"),
    pytest.param([(b"forwarded", b"for=203.0.113.7")], UNTRUSTED, id="lying Forwarded, untrusted peer"),
    pytest.param([(b"x-real-ip", b"203.0.113.7")], UNTRUSTED, id="X-Real-IP is not read"),
    pytest.param([(XFF, b"203.0.113.7, 198.51.100.1")], PROXY, id="XFF, spoof left of the real hop"),
    pytest.param([(XFF, b"203.0.113.7, " * 5000 + b"198.51.100.1")], PROXY, id="XFF 64 KiB"),
    pytest.param([(XFF, b"203.0.113.7\xff")], PROXY, id="XFF non-utf-8"),
    pytest.param([(XFF, b"203.0.113.7:99999:1")], PROXY, id="XFF odd port"),
    pytest.param([(XFF, b",,,")], PROXY, id="XFF only commas"),
    pytest.param([], ("", 0), id="empty peer address"),
    pytest.param([], ("203.0.113.7\x00", 0), id="peer address with NUL"),
    pytest.param([(b"sec-fetch-site", b"same-origin")], LISTED_PEER, id="listed server adds sec-fetch"),
]


@pytest.mark.parametrize(("headers", "peer"), ADDRESS_GAMES)
async def test_address_games(validator: Validator, headers: Headers, peer: tuple[str, int]) -> None:
    assert await refused(validator, [TOKEN, *headers], peer=peer) == 403


# Tokens that are no tokens, from the listed address: refused as missing (401) or ambiguous (403).
TOKEN_GAMES = [
    pytest.param([(b"x-api-key", b"di\xff")], b"", 403, id="token non-utf-8"),
    pytest.param([(b"x-api-key", b"x" * KIB64)], b"", 403, id="token 64 KiB"),
    pytest.param([(b"authorization", b"Bearer " + b"x" * KIB64)], b"", 403, id="bearer 64 KiB"),
    pytest.param([(b"x-api-key", b"d i")], b"", 403, id="token with space"),
    pytest.param([], b"api_key=di%FF", 403, id="query token non-utf-8"),
    pytest.param([], b"api_key=%", 403, id="query broken escape"),
    pytest.param([], b"&&==&api_key&=", 401, id="query only separators"),
    pytest.param([], b"\xff\xfe=\xff", 401, id="query non-utf-8"),
    pytest.param([], b"a=" + b"%41" * 20000, 401, id="query 64 KiB"),
    pytest.param([(b"authorization", b"Bearer")], b"", 401, id="bearer alone"),
    pytest.param([(b"", b"")], b"", 401, id="empty header name"),
]


@pytest.mark.parametrize(("headers", "query", "status"), TOKEN_GAMES)
async def test_token_games(validator: Validator, headers: Headers, query: bytes, status: int) -> None:
    assert await refused(validator, headers, query=query, peer=LISTED_PEER) == status


async def test_lying_forwarded_through_a_proxy(validator: Validator) -> None:
    app = Recorder()
    hide = b'for="203.0.113.7, for=10.0.0.5", for=198.51.100.1'
    for value in (hide, b'for="203.0.113.7', b"for=203.0.113.7;for=203.0.113.7, for=10.0.0.3"):
        reply = await call(
            middleware(app, validator, proxy_header="forwarded"), [TOKEN, (b"forwarded", value)], client=PROXY
        )
        assert reply.status == 403, value
    assert app.scopes == []


# Broken servers: the scope itself is malformed. Still a refusal, never an exception.
BROKEN_SCOPES = [
    pytest.param({"headers": [(b"x-api-key",)]}, id="header without value"),
    pytest.param({"headers": [b"x-api-key: di"]}, id="header as one bytes string"),
    pytest.param({"headers": None}, id="no header list"),
    pytest.param({"headers": [(b"x-api-key", "di")]}, id="header value as str"),
    pytest.param({"query_string": "api_key=di"}, id="query as str"),
    pytest.param({"client": "203.0.113.7"}, id="client as a string"),
]


@pytest.mark.parametrize("broken", BROKEN_SCOPES)
async def test_broken_scope_is_refused(validator: Validator, broken: dict[str, Any]) -> None:
    app = Recorder()
    reply = await call(middleware(app, validator), [TOKEN], client=UNTRUSTED, extra=broken)
    assert reply.status in (401, 403)
    assert app.scopes == []


HEADER_NAMES = [
    b"origin",
    b"referer",
    b"authorization",
    b"x-api-key",
    b"x-forwarded-for",
    b"forwarded",
    b"sec-fetch-site",
]


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), st.binary(max_size=300)), max_size=6),
    query=st.binary(max_size=100),
    peer=st.sampled_from([UNTRUSTED, PROXY, ("::ffff:10.0.0.9", 1), ("", 0)]),
)
def test_random_bytes_never_pass(
    headers: list[tuple[bytes, bytes]], query: bytes, peer: tuple[str, int]
) -> None:
    async def one() -> Reply:
        validator = await hostile_validator("asgi-hostile-random")
        app = Recorder()
        reply = await call(middleware(app, validator), [TOKEN, *headers], query=query, client=peer)
        await validator.close()
        assert app.scopes == []
        return reply

    assert asyncio.run(one()).status in (401, 403)
