"""The client address behind trusted proxies: who is trusted, X-Forwarded-For, RFC 7239 Forwarded."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.test_asgi import Headers, Recorder, call, key
from validator import Admin, ConfigurationError, Reason, Restrictions, Source, Validator
from validator.web import proxy_headers
from validator.web.middleware import TokenAccessMiddleware
from validator.web.proxy_headers import TrustedHosts, forwarded_hops, x_forwarded_for_hops

pytestmark = [pytest.mark.promise("P-TRUSTED-PROXIES")]

LISTED_IP = "203.0.113.7"
PROXY = "10.0.0.2"
TRUSTED = ["10.0.0.0/8", "127.0.0.1", "2001:db8::1", "fd00::/8"]

# --------------------------------------------------------------------------- who is trusted

MEMBERSHIP = [
    pytest.param("10.1.2.3", True, id="in a v4 network"),
    pytest.param("127.0.0.1", True, id="an address"),
    pytest.param("2001:db8::1", True, id="a v6 address"),
    pytest.param("2001:0db8:0000::0001", True, id="a v6 address spelled otherwise"),
    pytest.param("::ffff:10.0.0.2", True, id="v4-mapped v6 of a trusted v4"),
    pytest.param("fd12:3456::1", True, id="in a v6 network"),
    pytest.param("127.0.0.2", False, id="neighbour of an address"),
    pytest.param("11.0.0.1", False, id="outside the network"),
    pytest.param("2001:db8::2", False, id="other v6"),
    pytest.param("fe80::1", False, id="link-local"),
    pytest.param("", False, id="empty"),
    pytest.param("unknown", False, id="unknown"),
    pytest.param("010.0.0.2", False, id="leading zeros"),
    pytest.param("10.0.0.2:80", False, id="with port"),
    pytest.param("1" * 300, False, id="huge"),
    pytest.param(None, False, id="no address"),
]


@pytest.mark.parametrize(("host", "trusted"), MEMBERSHIP)
def test_trusted_hosts_membership(host: str | None, trusted: bool) -> None:
    assert (host in TrustedHosts(TRUSTED)) is trusted


def test_no_ipaddress_parsing_where_a_literal_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    trusted = TrustedHosts(["127.0.0.1", "2001:db8::1"])

    def fail(text: str) -> None:
        raise AssertionError(f"parsed {text!r}")

    monkeypatch.setattr(proxy_headers, "parse_ip", fail)
    assert "127.0.0.1" in trusted
    assert "2001:db8::1" in trusted
    assert "198.51.100.1" not in trusted
    assert not TrustedHosts([])


# --------------------------------------------------------------------------- X-Forwarded-For

# The trusted set is TRUSTED; each proxy appends the address it saw, so the client is the
# rightmost hop we do not trust, and a hop without an address ends the walk with none.
X_FORWARDED_FOR = [
    pytest.param("203.0.113.7", LISTED_IP, id="one hop"),
    pytest.param("203.0.113.7, 10.0.0.3", LISTED_IP, id="through an inner proxy"),
    pytest.param("198.51.100.1, 203.0.113.7, 10.0.0.3", LISTED_IP, id="spoofed hop on the left ignored"),
    pytest.param(" 203.0.113.7 ,10.0.0.3 ", LISTED_IP, id="spaces"),
    pytest.param("203.0.113.7:4711", LISTED_IP, id="v4 with port"),
    pytest.param("[2001:db8::7]:443", "2001:db8::7", id="bracketed v6 with port"),
    pytest.param("2001:db8::7", "2001:db8::7", id="bare v6"),
    pytest.param("::ffff:203.0.113.7", "::ffff:203.0.113.7", id="v4-mapped kept for IPSet"),
    pytest.param("10.0.0.4, 10.0.0.3", "10.0.0.4", id="all trusted: the leftmost"),
    pytest.param("unknown, 10.0.0.3", None, id="unknown hop"),
    pytest.param("203.0.113.7, unknown", None, id="unknown rightmost"),
    pytest.param("203.0.113.7, _hidden", None, id="obfuscated rightmost"),
    pytest.param(", 10.0.0.3", None, id="empty hop"),
    pytest.param("", None, id="empty header"),
    pytest.param("203.0.113.7 evil", None, id="garbage"),
    pytest.param("[2001:db8::7", None, id="unclosed bracket"),
]


@pytest.mark.parametrize(("header", "client"), X_FORWARDED_FOR)
def test_x_forwarded_for_client(header: str, client: str | None) -> None:
    assert TrustedHosts(TRUSTED).client(x_forwarded_for_hops(header)) == client


# --------------------------------------------------------------------------- Forwarded (RFC 7239)

FORWARDED = [
    pytest.param("for=203.0.113.7", LISTED_IP, id="one element"),
    pytest.param("for=203.0.113.7;proto=https;by=10.0.0.3", LISTED_IP, id="with other parameters"),
    pytest.param("by=10.0.0.3;For=203.0.113.7", LISTED_IP, id="parameter names are case-insensitive"),
    pytest.param('for="203.0.113.7:4711"', LISTED_IP, id="quoted v4 with port"),
    pytest.param('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17", id="quoted v6 with port"),
    pytest.param('for="[2001:db8:cafe::17]"', "2001:db8:cafe::17", id="quoted v6"),
    pytest.param('for="\\[2001:db8::17\\]"', "2001:db8::17", id="quoted-pair escapes"),
    pytest.param("for=198.51.100.1, for=203.0.113.7, for=10.0.0.3", LISTED_IP, id="spoofed element ignored"),
    pytest.param("for=10.0.0.4, for=10.0.0.3", "10.0.0.4", id="all trusted: the leftmost"),
    pytest.param("for=unknown", None, id="unknown"),
    pytest.param('for="_gazonk", for=10.0.0.3', None, id="obfuscated"),
    pytest.param("for=203.0.113.7, proto=https", None, id="element without for"),
    pytest.param("for=203.0.113.7;for=198.51.100.1", None, id="for twice in one element"),
    pytest.param('for="198.51.100.1, for=10.0.0.5"', None, id="comma hidden in quotes is no element"),
    pytest.param('for="203.0.113.7', None, id="unterminated quote"),
    pytest.param("for=", None, id="empty for"),
    pytest.param("for", None, id="no value"),
    pytest.param("", None, id="empty header"),
]


@pytest.mark.parametrize(("header", "client"), FORWARDED)
def test_forwarded_client(header: str, client: str | None) -> None:
    assert TrustedHosts(TRUSTED).client(forwarded_hops(header)) == client


# --------------------------------------------------------------------------- through the middleware


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    async with Validator.from_url(f"memory://asgi-proxies-{uuid.uuid4()}") as validator:
        await Admin(validator.store).put("i", Restrictions(ip_enabled=True, ips=[LISTED_IP]))
        yield validator


XFF = b"x-forwarded-for"
FWD = b"forwarded"
UNTRUSTED = "198.51.100.9"
CLIENT = "203.0.113.7"  # the listed address, as a proxy reports it
NONE: dict[str, Any] = {}
TRUST: dict[str, Any] = {"trusted_proxies": ["10.0.0.0/8"]}
TRUST_FWD: dict[str, Any] = {**TRUST, "proxy_header": "forwarded"}
LISTED, NOT_LISTED, NO_IP = Reason.IP_LISTED, Reason.IP_NOT_LISTED, Reason.NO_IP


def xff(*values: str) -> Headers:
    return [(XFF, v.encode()) for v in values]


def fwd(*values: str) -> Headers:
    return [(FWD, v.encode()) for v in values]


# (settings, peer, headers, reason); the token "i" lists only 203.0.113.7, so only IP_LISTED allows.
THROUGH_PROXIES = [
    pytest.param(NONE, UNTRUSTED, xff(CLIENT), NOT_LISTED, id="no proxy trusted: XFF ignored"),
    pytest.param(NONE, LISTED_IP, xff("198.51.100.1"), LISTED, id="no proxy trusted: the peer counts"),
    pytest.param(TRUST, UNTRUSTED, xff(CLIENT), NOT_LISTED, id="spoofed XFF, untrusted peer"),
    pytest.param(TRUST, PROXY, xff(CLIENT), LISTED, id="XFF from a trusted proxy"),
    pytest.param(TRUST, "::ffff:10.0.0.2", xff(CLIENT), LISTED, id="proxy seen as v4-mapped"),
    pytest.param(TRUST, PROXY, xff(CLIENT, "198.51.100.1"), NOT_LISTED, id="XFF merged, own first"),
    pytest.param(TRUST, PROXY, xff("198.51.100.1", CLIENT), LISTED, id="XFF merged in order"),
    pytest.param(TRUST, PROXY, xff(), NOT_LISTED, id="trusted proxy without XFF: the proxy itself"),
    pytest.param(TRUST, PROXY, xff("unknown"), NO_IP, id="XFF unknown"),
    pytest.param(TRUST, PROXY, fwd("for=" + CLIENT), NOT_LISTED, id="Forwarded ignored: XFF configured"),
    pytest.param(TRUST_FWD, PROXY, fwd("for=" + CLIENT), LISTED, id="Forwarded from a trusted proxy"),
    pytest.param(TRUST_FWD, PROXY, xff(CLIENT), NOT_LISTED, id="XFF ignored: Forwarded configured"),
    pytest.param(TRUST_FWD, UNTRUSTED, fwd("for=" + CLIENT), NOT_LISTED, id="lying Forwarded"),
    pytest.param(TRUST_FWD, PROXY, fwd("for=_hidden"), NO_IP, id="Forwarded obfuscated"),
    pytest.param(TRUST_FWD, PROXY, fwd(f"for={CLIENT}", "for=198.51.100.1"), NOT_LISTED, id="Fwd merged"),
    pytest.param(TRUST, None, xff(CLIENT), NO_IP, id="no peer address"),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "peer", "headers", "reason"), THROUGH_PROXIES)
async def test_client_address_through_proxies(
    validator: Validator, settings: dict[str, Any], peer: str | None, headers: Headers, reason: Reason
) -> None:
    middleware = TokenAccessMiddleware(Recorder(), validator=validator, **settings)
    reply = await call(middleware, [key("i"), *headers], client=None if peer is None else (peer, 1))
    assert reply.scope["state"]["token_access"].reason is reason
    assert reply.status == (200 if reason is LISTED else 403)


# --------------------------------------------------------------------------- single-address headers

# Headers in which a trusted edge puts the one address it saw (issue "Protect any stack", part 3).
SINGLE_HEADERS = ["x-real-ip", "cf-connecting-ip", "true-client-ip", "fly-client-ip", "x-client-address"]

SINGLE_VALUES = [
    pytest.param([CLIENT], LISTED, id="one address"),
    pytest.param([f"  {CLIENT} "], LISTED, id="spaces around"),
    pytest.param(["::ffff:203.0.113.7"], LISTED, id="v4-mapped v6"),
    pytest.param(["2001:db8::7"], NOT_LISTED, id="v6"),
    pytest.param([f"{CLIENT}:4711"], NO_IP, id="with a port"),
    pytest.param([f"[{CLIENT}]"], NO_IP, id="bracketed"),
    pytest.param([f"{CLIENT}, 10.0.0.3"], NO_IP, id="a list"),
    pytest.param([f"198.51.100.1,{CLIENT}"], NO_IP, id="a list ending in the listed one"),
    pytest.param([CLIENT, CLIENT], NO_IP, id="the header twice"),
    pytest.param([CLIENT, "198.51.100.1"], NO_IP, id="the header twice, differing"),
    pytest.param([""], NO_IP, id="empty"),
    pytest.param(["unknown"], NO_IP, id="unknown"),
    pytest.param(["203.0.113.007"], NO_IP, id="leading zeros"),
    pytest.param(["1" * 100], NO_IP, id="huge"),
    pytest.param(["203.0.113.7\x00"], NO_IP, id="a NUL"),
]


@pytest.mark.parametrize("name", SINGLE_HEADERS)
@pytest.mark.parametrize(("values", "reason"), SINGLE_VALUES)
async def test_a_single_address_header_from_a_trusted_edge(
    validator: Validator, name: str, values: list[str], reason: Reason
) -> None:
    middleware = TokenAccessMiddleware(Recorder(), validator=validator, **TRUST, proxy_header=name)
    headers = [(name.encode(), v.encode("latin-1")) for v in values]
    reply = await call(middleware, [key("i"), *headers], client=(PROXY, 1))
    assert reply.scope["state"]["token_access"].reason is reason
    assert reply.status == (200 if reason is LISTED else 403)


@pytest.mark.parametrize("name", SINGLE_HEADERS)
async def test_a_single_address_header_is_read_only_from_a_trusted_edge_and_alone(
    validator: Validator, name: str
) -> None:
    middleware = TokenAccessMiddleware(Recorder(), validator=validator, **TRUST, proxy_header=name.upper())
    header = (name.encode(), CLIENT.encode())
    # From an untrusted peer the header is the client's own claim: the peer counts.
    reply = await call(middleware, [key("i"), header], client=(UNTRUSTED, 1))
    assert reply.scope["state"]["token_access"].reason is NOT_LISTED
    # Only the configured header is read: X-Forwarded-For and Forwarded say nothing then.
    for other in (xff(CLIENT), fwd("for=" + CLIENT)):
        reply = await call(middleware, [key("i"), *other], client=(PROXY, 1))
        assert reply.scope["state"]["token_access"].reason is NOT_LISTED
    # A browser request is decided by its Origin; the address plays no part.
    reply = await call(middleware, [key("i"), header, (b"origin", b"https://x.example")], client=(PROXY, 1))
    assert reply.scope["state"]["token_access"].source is Source.FRONT_END


@pytest.mark.parametrize(
    "name",
    ["origin", "Referer", "authorization", "x-api-key", "sec-fetch-site", "access-control-x", "bad name", ""],
)
async def test_a_proxy_header_that_means_something_else_is_refused(validator: Validator, name: str) -> None:
    with pytest.raises(ConfigurationError, match="cannot name the client"):
        TokenAccessMiddleware(Recorder(), validator=validator, **TRUST, proxy_header=name)
